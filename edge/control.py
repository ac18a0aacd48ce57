"""The edge's side of the operator: paced drains, the control subject, the
drain grant, and the stats it writes for the EdgePool's scaling decisions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from edge import protocol
from edge.drain import DrainPace, next_move_at, reconnect_after_ms
from edge.node import Member, Node
from edge.ports import Delivery, NoResponders, RequestTimeout, SubscriptionHandle, Unavailable
from switchboard.contract.codes import CloseCode
from switchboard.contract.errors import MessageError
from switchboard.contract.messages import (
    ChannelUsage,
    ControlReply,
    DrainCommand,
    DrainGrant,
    DrainRequest,
    EdgeStats,
    decode_command,
)
from switchboard.contract.names import control_subject, drain_subject

log = logging.getLogger("switchboard.edge.control")

RATE_IGNORED = "rate ignored: its seq is older than the last"


class Control:
    """Drains this edge when told (SIGTERM, preStop, operator) at the pace granted."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._drain_task: asyncio.Task[None] | None = None
        self._pace = DrainPace(node.settings.drain_reconnects_per_s)
        self._rate_changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._ctl: SubscriptionHandle | None = None

    @property
    def draining(self) -> bool:
        return self._drain_task is not None

    @property
    def rate(self) -> float:
        """Connections moved per second by a drain now."""
        return self._pace.rate

    def start_drain(self, reason: str) -> asyncio.Task[None]:
        """Begin draining (once); later calls return the same task."""
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain(reason))
        return self._drain_task

    def offer_pace(self, message: DrainGrant | None) -> bool:
        """A grant or re-pace from the operator; applies at once to a running drain."""
        if not self._pace.offer(message):
            return False
        self._rate_changed.set()
        return True

    async def _drain(self, reason: str) -> None:
        """DESIGN §5: stop accepting, then move clients away at the granted pace.

        Each connection gets `reconnect` (jittered `after_ms`) and a 1001 close;
        at the deadline the rest go at once. Open connections keep working
        until their turn.
        """
        node = self.node
        node.accepting = False
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.offer_pace(await self._ask_drain_grant(reason))
        log.info(
            "draining",
            extra={
                "pod": node.settings.pod_name,
                "reason": reason,
                "connections": len(node.members),
                "rate": self._pace.rate,
            },
        )
        pending = sorted(node.members, key=lambda m: m.id)
        closing: set[asyncio.Task[None]] = set()
        deadline = started + node.settings.drain_timeout_s
        last_move = started
        while pending:
            due = next_move_at(last_move, self._pace.rate, deadline)
            now = loop.time()
            if now < due:
                self._rate_changed.clear()  # a new grant re-computes `due` at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rate_changed.wait(), due - now)
                continue
            batch = pending if now >= deadline else [pending[0]]
            pending = pending[len(batch) :]
            for member in batch:
                task = asyncio.create_task(self._move(member, reason))
                closing.add(task)
                task.add_done_callback(closing.discard)
            last_move = now
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        log.info(
            "drained",
            extra={"pod": node.settings.pod_name, "seconds": round(loop.time() - started, 3)},
        )

    async def _move(self, member: Member, reason: str) -> None:
        after_ms = reconnect_after_ms(self.node.settings.reconnect_jitter_ms)
        member.send(protocol.reconnect(self.node.resume_token(member), after_ms, reason))
        # No await since the token was minted: close() stops further deliveries at once,
        # so the client has exactly what the token's offsets say.
        await member.link.close(CloseCode.GOING_AWAY, reason)

    async def _ask_drain_grant(self, reason: str) -> DrainGrant | None:
        """Request `sb.operator.drain`; None when no operator answers (the default pace
        stays)."""
        settings = self.node.settings
        body = DrainRequest(settings.pod_name, len(self.node.members), reason).encode()
        subject = drain_subject(settings.subject_prefix)
        try:
            answer = await self.node.backbone.request(
                subject, body, {}, settings.drain_grant_timeout_s
            )
            return DrainGrant.decode(answer.data)
        except (NoResponders, RequestTimeout, Unavailable):
            return None
        except MessageError as exc:
            log.warning("ignored the operator's drain grant: %s", exc)
            return None

    async def listen(self) -> None:
        """`sb.edge.<pod>.ctl`: `{"command": "drain"}` or
        `{"command": "rate", "reconnects_per_second": N}`."""
        settings = self.node.settings
        subject = control_subject(settings.subject_prefix, settings.pod_name)
        self._ctl = await self.node.backbone.subscribe(subject, self._on_control)

    def _on_control(self, delivery: Delivery) -> None:
        answer = self._answer(delivery.data)
        if not answer.ok and answer.error != RATE_IGNORED:  # a stale pace is normal
            # NATS lets only the operator publish here; anything refused is a bug or a
            # probe: do nothing, say so, and count it
            self.node.metrics.control_refused += 1
            log.warning(
                "refused a control message: %s",
                answer.error,
                extra={"pod": self.node.settings.pod_name, "bytes": len(delivery.data)},
            )
        if delivery.reply:
            task = asyncio.create_task(
                self.node.backbone.publish(delivery.reply, answer.encode(), {})
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _answer(self, data: bytes) -> ControlReply:
        try:
            command = decode_command(data)
        except MessageError as exc:
            return ControlReply(False, error=str(exc)[:200])
        if isinstance(command, DrainCommand):
            self.start_drain(command.reason)
            return ControlReply(True, connections=len(self.node.members))
        if self.offer_pace(command):
            return ControlReply(True)
        return ControlReply(False, error=RATE_IGNORED)

    def stats(self) -> EdgeStats:
        node = self.node
        return EdgeStats(
            pod=node.settings.pod_name,
            connections=len(node.members),
            subscriptions=node.hub.subscription_count,
            draining=self.draining,
            accepting=node.accepting,
            ts=int(time.time() * 1000),
            channels={name: ChannelUsage(**usage) for name, usage in node.channel_usage().items()},
        )

    async def report_stats(self) -> None:
        """Every `stats_interval_s`, this edge's live numbers into `sb_edges`."""
        while True:
            try:
                await self.node.backbone.put_edge_stats(
                    self.node.settings.pod_name, self.stats().encode()
                )
            except Unavailable as exc:
                log.debug("stats not written: %s", exc)
            except Exception:  # a background loop must outlive any one failure
                log.exception("stats not written")
            await asyncio.sleep(self.node.settings.stats_interval_s)
