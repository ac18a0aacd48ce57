"""The asyncio adapter for one client: moves bytes between the socket and its
`Member` (edge.node), which carries out the Session's actions.

It owns the connection's bounded Outbox, keepalive and closing. Frames leave
through the shared Flusher, written straight into the transport while it
accepts data; when the transport pushes back, one short-lived task waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidState

from edge.flusher import Flusher
from edge.node import Member, Node
from edge.outbox import Outbox
from edge.session import Session
from switchboard.contract.codes import CloseCode
from switchboard.contract.tokens import Claims

log = logging.getLogger("switchboard.edge.connection")


class EdgeConnection(ServerConnection):
    """websockets' connection, plus the claims established during the upgrade."""

    claims: Claims | None = None
    resume: list[dict[str, Any]] | None = None  # subscriptions to restore (`?resume=`)


class Connection:
    """One websockets connection: its outbox, keepalive and close; a `Link` for its
    `Member`."""

    __slots__ = (
        "_blocked",
        "_closing",
        "_expiry",
        "_flush_requested",
        "_flusher",
        "_log",
        "_now",
        "_ping_sent",
        "_pong",
        "_room",
        "_tasks",
        "closed_with",
        "id",
        "member",
        "node",
        "outbox",
        "session",
        "ws",
    )

    def __init__(
        self, node: Node, flusher: Flusher, ws: EdgeConnection, session: Session, cid: str
    ) -> None:
        self.node = node
        self.ws = ws
        self.session = session
        self.id = cid
        self.member = Member(node, self, session, cid)
        self.outbox = Outbox(node.settings.outbox_max_bytes, node.settings.slow_consumer_grace_s)
        self._flusher = flusher
        self._log: logging.LoggerAdapter[logging.Logger] | None = None
        self._flush_requested = False
        self._blocked = False  # the transport is over its high-water mark
        self._tasks: set[asyncio.Task[None]] | None = None  # made when first needed
        self._expiry: asyncio.TimerHandle | None = None
        self._pong: asyncio.Future[float] | None = None
        self._ping_sent = asyncio.get_running_loop().time()
        self._closing = False
        self._room: asyncio.Event | None = None  # set when the outbox drained (replay waits)
        self.closed_with: int | None = None
        self._now: Callable[[], float] = asyncio.get_running_loop().time

    # -- Link -----------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    def deliver(self, frame: bytes) -> None:
        if self._closing:
            return
        if not self.outbox.push(frame, self._now()):
            self.evict("outbound buffer full")
        elif not self._flush_requested and not self._blocked:
            self._flush_requested = True
            self._flusher.request(self)

    def flush(self) -> None:
        """Write pending frames into the transport until it pushes back."""
        self._flush_requested = False
        ws = self.ws
        while not self._blocked and not self._closing:
            data = self.outbox.take(self._now())
            if data is None:
                break
            try:
                ws.protocol.send_text(data)
            except InvalidState:  # closing: the close handshake owns the socket now
                return
            ws.send_data()
            if ws.transport.get_write_buffer_size() > ws.write_limit_high:
                self._blocked = True
                self.spawn(self._wait_writable())
        room = self._room
        if room is not None and self.outbox.pending_bytes <= self._replay_budget:
            room.set()

    @property
    def _replay_budget(self) -> int:
        """Outbox bytes a replay may fill: the rest stays free for live traffic."""
        return self.node.settings.outbox_max_bytes // 2

    async def room_for(self, size: int) -> None:
        """Wait until the client has taken enough of its outbox for `size` more bytes."""
        while self.outbox.pending_bytes and self.outbox.pending_bytes + size > self._replay_budget:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    async def _wait_writable(self) -> None:
        try:
            await self.ws.drain()
        except (ConnectionClosed, OSError):
            return
        self._blocked = False
        self.flush()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._tasks is None:
            self._tasks = set()
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """Logs with connection id, user and pod (made on first use: most never log)."""
        if self._log is None:
            self._log = logging.LoggerAdapter(log, self.log_fields())
        return self._log

    def log_fields(self) -> dict[str, Any]:
        return {"conn": self.id, "user": self.session.user, "pod": self.node.settings.pod_name}

    # -- keepalive ------------------------------------------------------------

    def keepalive(self, now: float, interval_s: float, timeout_s: float) -> None:
        """Ping every `interval_s`; a pong missing after `timeout_s` closes with 1011."""
        if self._closing:
            return
        waiting = self._pong
        if waiting is not None and not waiting.done():
            if now - self._ping_sent > timeout_s:
                self._closing = True
                self.closed_with = CloseCode.INTERNAL_ERROR
                self.spawn(self._abandon(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"))
            return
        if now - self._ping_sent >= interval_s and not self._blocked:
            self._ping_sent = now
            self.spawn(self._ping())

    async def _ping(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            # websockets returns the pong future it resolves (typed as an Awaitable)
            self._pong = cast("asyncio.Future[float]", await self.ws.ping())

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        settings = self.node.settings
        welcome = self.session.welcome(self.id, settings.pod_name, settings.ping_interval_s)
        self.member.send(welcome.text)
        self._schedule_expiry()
        try:
            await self.member.start(self.ws.resume or [])
            async for message in self.ws:
                if isinstance(message, bytes):
                    actions = self.session.receive_binary()
                else:
                    actions = self.session.receive(message, self._now())
                await self.member.execute(actions)
                if self.session.closed:
                    break
        except ConnectionClosed:
            pass
        finally:
            self._closing = True
            if self._expiry is not None:
                self._expiry.cancel()
            for task in tuple(self._tasks or ()):
                task.cancel()
            await self.member.finish()

    def _schedule_expiry(self) -> None:
        """Close with 4001 once `exp` passes; a `refresh` moves `exp` and the wait goes on."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.session.claims.exp - time.time()) + 0.05
        self._expiry = loop.call_later(delay, self._check_expiry)

    def _check_expiry(self) -> None:
        actions = self.session.check_expiry(time.time())
        if actions:
            self.spawn(self.member.execute(actions))
        elif not self._closing:
            self._schedule_expiry()

    async def close(self, code: int, reason: str) -> None:
        """Flush what is pending, then close with `code`."""
        self._closing = True
        try:
            async with asyncio.timeout(2.0):
                while (data := self.outbox.take()) is not None:
                    await self.ws.send(data, text=True)
                await self.ws.close(code, reason)
        except (TimeoutError, ConnectionClosed):
            self.ws.transport.abort()
        self.closed_with = code

    def evict(self, why: str) -> None:
        """Slow consumer: close with 1013 without waiting on its full buffer."""
        if self._closing:
            return
        self._closing = True
        self.closed_with = CloseCode.TRY_AGAIN_LATER
        self.log.warning("evicting slow consumer: %s", why)
        self.node.metrics.evictions += 1
        self.outbox.clear()
        self.spawn(self._abandon(CloseCode.TRY_AGAIN_LATER, "slow consumer"))

    def abandon(self, code: int, reason: str) -> None:
        """Close without flushing, in the background."""
        self.spawn(self._abandon(code, reason))

    async def _abandon(self, code: int, reason: str) -> None:
        """Close without flushing; abort if the close frame cannot go out within 1 s."""
        try:
            async with asyncio.timeout(1.0):
                await self.ws.close(code, reason)
        except (TimeoutError, ConnectionClosed):
            pass
        finally:
            self.ws.transport.abort()
