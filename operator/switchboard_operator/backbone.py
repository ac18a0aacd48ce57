"""The operator's side of NATS: the only operator module that imports `nats`.

Writes Channel configs and streams (through the same `switchboard_operator.channelstore`
functions the CLI uses, so both produce the same entry), follows live edge
stats in `sb_edges`, answers drain-grant requests, re-paces draining edges and
asks hot edges to shed.
Reconnects forever, like an edge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from switchboard import telemetry
from switchboard.contract.channel_config import ChannelSpec, stream_name
from switchboard.contract.errors import MessageError, ReplicasRefused, Unavailable
from switchboard.contract.messages import (
    DrainGrant,
    DrainRequest,
    EdgeStats,
    RateCommand,
    ShedCommand,
)
from switchboard.contract.names import EDGES_BUCKET, control_subject, drain_subject, stream_epoch
from switchboard.contract.natsauth import redact
from switchboard.contract.settings import ReplicasSetting
from switchboard_operator import channelstore, tracing

log = logging.getLogger("switchboard.operator.backbone")

# A report this old is forgotten: its pod is long gone (a live pod that silent was
# replaced long before; one still there is judged as never heard from: report_of).
FORGET_AFTER_S = 3600.0


# (pod, connections) → the pace granted, or None to stay silent (not ours to answer).
GrantFn = Callable[[str, int], Awaitable[float | None]]


@dataclass(frozen=True, slots=True)
class StreamState:
    last_offset: int
    epoch: str


class OperatorBackbone:
    def __init__(
        self,
        servers: str,
        prefix: str,
        stale_after_s: float,
        *,
        replicas: ReplicasSetting = "auto",
        options: dict[str, Any] | None = None,
    ) -> None:
        self._servers = [s.strip() for s in servers.split(",") if s.strip()]
        self._options = options or {}  # credentials and TLS (switchboard.contract.natsauth)
        self._prefix = prefix
        self._replicas: ReplicasSetting = replicas
        self._stale_after_s = stale_after_s
        self._nc: Client | None = None
        self._edges: dict[str, tuple[EdgeStats, float]] = {}  # pod → last report, read when
        self._watching_since: float | None = None  # the first watch of `sb_edges` began
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0  # the last pace sequence number handed out

    async def connect(self) -> None:
        """Connect, retrying forever: the operator is useless without NATS but must
        not crash-loop while NATS is still starting."""
        while True:
            try:
                self._nc = await nats.connect(
                    servers=self._servers,
                    name="switchboard-operator",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    error_cb=self._error,
                    **self._options,
                )
                break
            except (nats.errors.Error, OSError) as exc:
                log.warning("nats not reachable yet: %s", exc)
                await asyncio.sleep(1)
        log.info("nats connected", extra={"servers": [redact(s) for s in self._servers]})
        self._spawn(self._follow_edges())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _error(self, exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    @property
    def client(self) -> Client:
        if self._nc is None or not self._nc.is_connected:
            raise Unavailable("not connected to NATS")
        return self._nc

    # -- channels ------------------------------------------------------------

    async def apply_channel(self, name: str, spec: ChannelSpec) -> None:
        try:
            await channelstore.write_channel(self.client, name, spec, self._prefix, self._replicas)
        except ReplicasRefused as exc:  # switchboard.jetstream's, a NATS error as well
            raise ReplicasRefused(f"channel {name}: {exc}") from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"channel {name}: {exc!r}") from None

    async def remove_channel(self, name: str) -> None:
        try:
            await channelstore.erase_channel(self.client, name, self._replicas)
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"channel {name}: {exc!r}") from None

    async def stream_state(self, name: str) -> StreamState | None:
        """Last offset and epoch of a Channel's history stream (None: no stream)."""
        try:
            info = await self.client.jetstream().stream_info(stream_name(name))
        except NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"stream of {name}: {exc!r}") from None
        epoch = stream_epoch(info.created, stream_name(name))
        return StreamState(last_offset=int(info.state.last_seq), epoch=epoch)

    # -- edges ---------------------------------------------------------------

    def edge_stats(self) -> dict[str, EdgeStats]:
        """Edges that reported recently (a dead edge's last entry is ignored)."""
        cutoff = time.monotonic() - self._stale_after_s
        return {pod: stats for pod, (stats, received) in self._edges.items() if received >= cutoff}

    @property
    def stale_after_s(self) -> float:
        """A report older than this is a dead (or cut-off) edge's."""
        return self._stale_after_s

    def edge_silence(self) -> dict[str, float]:
        """Seconds since each edge's last report, the stale ones included (an entry
        leaves when its edge deletes it on the way out, or after FORGET_AFTER_S: a
        pod gone without a word, whose name never comes back)."""
        now = time.monotonic()
        for pod in [p for p, (_, at) in self._edges.items() if now - at > FORGET_AFTER_S]:
            del self._edges[pod]
        return {pod: now - received for pod, (_, received) in self._edges.items()}

    @property
    def watching_s(self) -> float:
        """Since this operator began to watch edge reports (0 before): a pod it has
        not heard from in that time may have reported before it."""
        since = self._watching_since
        return 0.0 if since is None else time.monotonic() - since

    async def _follow_edges(self) -> None:
        """Keep `_edges` current from a KV watch; restart it whenever it breaks."""
        while True:
            try:
                kv = await self.client.jetstream().key_value(EDGES_BUCKET)
                watcher = await kv.watchall()
                if self._watching_since is None:
                    self._watching_since = time.monotonic()
                async for entry in watcher:
                    if entry is None:
                        continue
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self._edges.pop(entry.key, None)
                        continue
                    self._record(entry.key, entry.value)
            except (nats.errors.Error, TimeoutError, Unavailable) as exc:
                log.debug("edge stats watch restarting: %s", exc)
                await asyncio.sleep(1)

    def _record(self, pod: str, value: bytes) -> None:
        """Keep an edge's report (under its key: the pod that wrote it)."""
        try:
            stats = EdgeStats.decode(value)
        except MessageError as exc:
            log.warning("ignored malformed edge stats: %s", exc, extra={"pod": pod})
            return
        self._edges[pod] = (stats, time.monotonic())

    # -- drains --------------------------------------------------------------

    def _next_seq(self) -> int:
        """Orders this operator's paces for an edge, which keeps the newest: its grant
        reply and a re-pace sent right after can be handled in either order. Wall
        clock, so a replica taking over after a failover continues above it."""
        self._seq = max(time.time_ns(), self._seq + 1)
        return self._seq

    async def serve_drain_grants(self, grant: GrantFn) -> None:
        """Answer each `DrainRequest` on `<prefix>.operator.drain` with a `DrainGrant`."""

        async def on_request(msg: Msg) -> None:
            try:
                request = DrainRequest.decode(msg.data)
            except MessageError as exc:
                log.warning("ignored a malformed drain request: %s", exc)
                return
            with tracing.grant_span(msg.headers, request.pod, request.connections):
                rate = await grant(request.pod, request.connections)
                if rate is not None and msg.reply:
                    await msg.respond(DrainGrant(rate, self._next_seq()).encode())

        await self.client.subscribe(drain_subject(self._prefix), cb=on_request)

    async def send_rate(self, pod: str, rate: float) -> None:
        """Re-pace a drain already running on `pod`."""
        command = RateCommand(rate, self._next_seq())
        try:
            await self.client.publish(control_subject(self._prefix, pod), command.encode())
        except (nats.errors.Error, Unavailable) as exc:
            log.warning("rate not sent to %s: %s", pod, exc)

    async def send_shed(self, pod: str, connections: int, rate: float) -> None:
        """Ask `pod` to move `connections` clients away at `rate` (0: stop shedding)."""
        command = ShedCommand(connections, rate, self._next_seq())
        headers: dict[str, str] = {}
        telemetry.inject(headers)  # the edge's `shed` span links to the active span
        try:
            await self.client.publish(
                control_subject(self._prefix, pod), command.encode(), headers=headers or None
            )
        except (nats.errors.Error, Unavailable) as exc:
            log.warning("shed not sent to %s: %s", pod, exc)
