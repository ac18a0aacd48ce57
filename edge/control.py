"""The edge's side of the operator: paced drains and sheds, the control subject,
the drain grant, and the stats it writes for the EdgePool's scaling decisions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Mapping

from opentelemetry.trace import Span

from edge import protocol, tracing
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
    ShedCommand,
    decode_command,
)
from switchboard.contract.names import control_subject, drain_subject

log = logging.getLogger("switchboard.edge.control")

RATE_IGNORED = "rate ignored: its seq is older than the last"
SHED_IGNORED = "shed ignored: its seq is older than the last"
SHED_DRAINING = "shed refused: the edge is draining"
EXPECTED = {RATE_IGNORED, SHED_IGNORED, SHED_DRAINING}  # normal races, not refusals
SHED_SETTLE_S = 1.0  # after the jitter window, for the last moved clients' handshakes
# Moved clients refused by shedding pods retry with backoff (0.5 s doubling): a pod
# that just shed keeps refusing them this long after its jitter window, so the
# stragglers too land on pods that did not shed.
SHED_REFUSE_TAIL_S = 10.0


class Control:
    """Drains this edge when told (SIGTERM, preStop, operator) at the pace granted."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._drain_task: asyncio.Task[None] | None = None
        self._pace = DrainPace(node.settings.drain_reconnects_per_s)
        self._rate_changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._ctl: SubscriptionHandle | None = None
        self._shed_task: asyncio.Task[None] | None = None
        self._shed_left = 0
        self._shed_pace = DrainPace(node.settings.drain_reconnects_per_s)
        self._shed_reason = "rebalance"
        self._shed_changed = asyncio.Event()
        self._shed_settled_at = 0.0  # loop time: moved clients may be back by then
        self._refuse_until = 0.0  # loop time: refuse clients moved by a shed until then
        self._moving: set[Member] = set()  # told to move (pruned once they have left)

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
            self._stop_shed()  # the drain moves everyone anyway, at its own pace
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
        span = tracing.drain_span(node.settings.pod_name, reason, len(node.members))
        self.offer_pace(await self._ask_drain_grant(reason, span))
        if span is not None:
            span.set_attribute("switchboard.drain.rate", self._pace.rate)
        log.info(
            "draining",
            extra={
                "pod": node.settings.pod_name,
                "reason": reason,
                "connections": len(node.members),
                "rate": self._pace.rate,
            },
        )
        pending = sorted(node.members - self._moving, key=lambda m: m.id)
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
        if span is not None:
            span.end()

    async def _move(self, member: Member, reason: str, *, shed: bool = False) -> None:
        after_ms = reconnect_after_ms(self.node.settings.reconnect_jitter_ms)
        token = self.node.resume_token(member, shed=shed)
        member.send(protocol.reconnect(token, after_ms, reason))
        log.debug("moving", extra={"conn": member.id, "reason": reason, "after_ms": after_ms})
        # No await since the token was minted: close() stops further deliveries at once,
        # so the client has exactly what the token's offsets say.
        # Told to move: no longer this pod's, even while its close handshake lasts (a
        # slow client holds it in `members` up to the close timeout).
        self._moving.add(member)
        await member.link.close(CloseCode.GOING_AWAY, reason)

    # -- shed: move some connections away, still accepting and Ready -----------

    @property
    def shed_pending(self) -> int:
        """Connections the running shed still has to move."""
        return self._shed_left if self._shed_task is not None else 0

    @property
    def shedding(self) -> bool:
        """A shed runs, or clients it moved may still be on their way back (the
        reconnect jitter after its last move): the pool's counts are not settled."""
        loop = asyncio.get_running_loop()
        return self._shed_task is not None or loop.time() < self._shed_settled_at

    def _refresh_refusal(self) -> None:
        loop = asyncio.get_running_loop()
        self.node.shedding = self._shed_task is not None or loop.time() < self._refuse_until

    def shed(self, command: ShedCommand, headers: Mapping[str, str] | None = None) -> ControlReply:
        """Start, re-target or stop (`connections: 0`) a shed; the answer says how many
        connections it will move. `headers`: the command's (the operator's trace)."""
        if self.draining:
            return ControlReply(False, error=SHED_DRAINING)
        if not self._shed_pace.offer(command):
            return ControlReply(False, error=SHED_IGNORED)
        self._shed_reason = command.reason
        self._shed_left = min(command.connections, self.staying())
        self._shed_changed.set()
        if self._shed_left == 0:
            self._stop_shed()
            return ControlReply(True, connections=0)
        if self._shed_task is None:
            self.node.shedding = True
            span = tracing.shed_span(
                self.node.settings.pod_name,
                command.reason,
                self._shed_left,
                self._shed_pace.rate,
                headers,
            )
            self._shed_task = asyncio.create_task(self._shed(span))
        log.info(
            "shedding",
            extra={
                "pod": self.node.settings.pod_name,
                "connections": self._shed_left,
                "rate": self._shed_pace.rate,
                "reason": command.reason,
            },
        )
        return ControlReply(True, connections=self._shed_left)

    def _stop_shed(self) -> None:
        self._shed_left = 0
        self._shed_changed.set()

    def _shed_order(self) -> deque[Member]:
        """Who goes first: connections without RPCs in flight (an answer would be
        lost with the socket), and of those the newest (the least settled: fewest
        subscriptions to restore, and long-lived sessions keep their place)."""
        candidates = self.node.members - self._moving
        return deque(sorted(candidates, key=lambda m: (m.session.rpcs_in_flight > 0, -m.joined)))

    async def _shed(self, span: Span | None) -> None:
        """Like a drain's loop, for `_shed_left` connections, with new ones accepted
        meanwhile; a new command re-targets it (count and pace) at once."""
        loop = asyncio.get_running_loop()
        node = self.node
        moved = 0
        last_move = loop.time()
        order = self._shed_order()
        closing: set[asyncio.Task[None]] = set()
        try:
            while self._shed_left > 0 and not self.draining:
                due = next_move_at(last_move, self._shed_pace.rate, math.inf)
                now = loop.time()
                if now < due:
                    self._shed_changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._shed_changed.wait(), due - now)
                    continue
                member = self._next_to_shed(order)
                if member is None:
                    order = self._shed_order()  # newcomers since the order was taken
                    member = self._next_to_shed(order)
                    if member is None:
                        break
                self._shed_left -= 1
                moved += 1
                task = asyncio.create_task(self._move(member, self._shed_reason, shed=True))
                closing.add(task)
                task.add_done_callback(closing.discard)
                last_move = now
            if closing:
                await asyncio.gather(*closing, return_exceptions=True)
        finally:
            self._shed_left = 0
            self._shed_task = None
            jitter_s = node.settings.reconnect_jitter_ms / 1000
            self._shed_settled_at = loop.time() + jitter_s + SHED_SETTLE_S
            self._refuse_until = loop.time() + jitter_s + SHED_REFUSE_TAIL_S
            log.info("shed", extra={"pod": node.settings.pod_name, "moved": moved})
            if span is not None:
                span.set_attribute("switchboard.shed.moved", moved)
                span.end()
            loop.call_later(jitter_s + SHED_REFUSE_TAIL_S + 0.01, self._refresh_refusal)

    def _next_to_shed(self, order: deque[Member]) -> Member | None:
        """The first of `order` still here and not moving; one with an RPC in flight
        (started since the order was taken) only when nobody else is left."""
        busy: list[Member] = []
        try:
            while order:
                member = order.popleft()
                if member not in self.node.members or member in self._moving:
                    continue
                if member.session.rpcs_in_flight:
                    busy.append(member)
                    continue
                return member
            return busy.pop(0) if busy else None
        finally:
            order.extend(busy)

    async def _ask_drain_grant(self, reason: str, span: Span | None) -> DrainGrant | None:
        """Request `sb.operator.drain`; None when no operator answers (the default pace
        stays)."""
        settings = self.node.settings
        body = DrainRequest(settings.pod_name, len(self.node.members), reason).encode()
        subject = drain_subject(settings.subject_prefix)
        headers: dict[str, str] = {}
        tracing.inject(headers, span)  # the operator's grant links to this drain
        try:
            answer = await self.node.backbone.request(
                subject, body, headers, settings.drain_grant_timeout_s
            )
            return DrainGrant.decode(answer.data)
        except (NoResponders, RequestTimeout, Unavailable):
            return None
        except MessageError as exc:
            log.warning("ignored the operator's drain grant: %s", exc)
            return None

    async def listen(self) -> None:
        """`sb.edge.<pod>.ctl`: `{"command": "drain"}`,
        `{"command": "rate", "reconnects_per_second": N}` or
        `{"command": "shed", "connections": N, "reconnects_per_second": R}`."""
        settings = self.node.settings
        subject = control_subject(settings.subject_prefix, settings.pod_name)
        self._ctl = await self.node.backbone.subscribe(subject, self._on_control)

    def _on_control(self, delivery: Delivery) -> None:
        answer = self._answer(delivery.data, delivery.headers)
        if not answer.ok and answer.error not in EXPECTED:  # a stale pace is normal
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

    def _answer(self, data: bytes, headers: Mapping[str, str] | None = None) -> ControlReply:
        try:
            command = decode_command(data)
        except MessageError as exc:
            return ControlReply(False, error=str(exc)[:200])
        if isinstance(command, DrainCommand):
            self.start_drain(command.reason)
            return ControlReply(True, connections=len(self.node.members))
        if isinstance(command, ShedCommand):
            return self.shed(command, headers)
        if self.offer_pace(command):
            return ControlReply(True)
        return ControlReply(False, error=RATE_IGNORED)

    def staying(self) -> int:
        """Connections not told to move: what the operator balances."""
        self._moving &= self.node.members
        return len(self.node.members) - len(self._moving)

    def stats(self) -> EdgeStats:
        node = self.node
        return EdgeStats(
            pod=node.settings.pod_name,
            connections=self.staying(),
            subscriptions=node.hub.subscription_count,
            draining=self.draining,
            accepting=node.accepting,
            shedding=self.shedding,
            shed_pending=self.shed_pending,
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
