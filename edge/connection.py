"""The adapter between one client's WebSocket (`edge.transport.ClientSocket`) and its
`Member` (edge.node), which carries out the Session's actions.

It owns the connection's bounded Outbox, keepalive and closing. Frames leave
through the shared Flusher, written straight into the transport while it
accepts data; when the transport pushes back (`pause_writing`) they wait in the
outbox until it resumes. Client frames are handled in order by a task that
exists only while there is work (joining at the start, a frame being handled,
leaving at the end): an idle connection runs nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from edge.flusher import Flusher
from edge.node import Member, Node
from edge.outbox import Outbox
from edge.session import Session
from edge.transport import ClientSocket

if TYPE_CHECKING:
    pass
from switchboard.contract.codes import CloseCode

log = logging.getLogger("switchboard.edge.connection")

CLOSE_TIMEOUT_S = 2.0  # flush and close handshake, then the socket is aborted
ABANDON_TIMEOUT_S = 1.0  # close without flushing: the close frame gets this long
ABNORMAL_CLOSURE = 1006  # the socket ended without a closing handshake (RFC 6455 §7.1.5)
_ping_ids = itertools.count(1)


class Wire(Protocol):
    """What a connection writes to: its socket's WebSocket (`ClientSocket`), or an SSE
    stream over that socket (`edge.sse.SseWire`)."""

    @property
    def paused(self) -> bool:
        """The transport's buffer is over its high-water mark."""
        ...

    @property
    def close_codes(self) -> tuple[int | None, int | None]:
        """The WebSocket close codes sent and received so far (None: none)."""
        ...

    def send_text(self, data: bytes) -> bool:
        """Write one message (or several joined by `\n`); False once closing."""
        ...

    def send_ping(self, data: bytes) -> bool: ...

    def close(self, code: int, reason: str, timeout_s: float | None = None) -> None:
        """End with `code`; abort if the peer has not gone within `timeout_s`."""
        ...

    def abort(self) -> None: ...


class _Gone:
    """What a finished member is linked to: nothing reaches the socket any more."""

    closing = True
    log = logging.LoggerAdapter(log, {})

    def deliver(self, frame: bytes) -> None:
        pass

    async def room_for(self, size: int) -> None:
        pass

    def abandon(self, code: int, reason: str) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        pass

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        coro.close()


_GONE = _Gone()


class Connection:
    """One client: its outbox, keepalive, inbound frames and close; a `Link` for
    its `Member` and the owner of its socket's WebSocket (an SSE stream is the same
    with another `Wire` and keepalive: `edge.sse.SseStream`)."""

    __slots__ = (
        "_flush_requested",
        "_flusher",
        "_gone",
        "_inbox",
        "_log",
        "_lost",
        "_now",
        "_on_done",
        "_ping",
        "_ping_sent",
        "_resume",
        "_room",
        "_started",
        "_tasks",
        "_worker",
        "closed_with",
        "closing",
        "id",
        "member",
        "node",
        "outbox",
        "session",
        "sock",
    )

    def __init__(
        self,
        node: Node,
        flusher: Flusher,
        sock: Wire,
        session: Session,
        cid: str,
        *,
        resume: list[dict[str, Any]] | None = None,
        on_done: Callable[[Connection], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.node = node
        self.sock = sock
        self.session = session
        self.id = cid
        self.member = Member(node, self, session, cid)
        self.outbox = Outbox(node.settings.outbox_max_bytes, node.settings.slow_consumer_grace_s)
        self.closing = False
        self.closed_with: int | None = None
        self._flusher = flusher
        self._log: logging.LoggerAdapter[logging.Logger] | None = None
        self._flush_requested = False
        self._tasks: set[asyncio.Task[None]] | None = None  # made when first needed
        self._ping: bytes | None = None  # payload of the ping waiting for its pong
        self._ping_sent = loop.time()
        self._room: asyncio.Event | None = None  # set when the outbox drained (replay waits)
        self._now: Callable[[], float] = loop.time
        self._resume = resume  # subscriptions to restore (`?resume=`)
        self._inbox: list[str | bytes] | None = None  # client frames not handled yet
        self._worker: asyncio.Task[None] | None = None
        self._started = False
        self._lost = False  # the socket is gone
        self._gone: asyncio.Future[None] | None = None  # made by close(), set when gone
        self._on_done = on_done

    def open(self, head: bytes) -> None:
        """Send the 101 and the `welcome` in one write, then join the user's subject
        (at once; a resume token's subscriptions are restored by the worker)."""
        settings = self.node.settings
        welcome = self.session.welcome(self.id, settings.pod_name, settings.ping_interval_s)
        sock = self.sock
        assert isinstance(sock, ClientSocket)
        sock.accept_websocket(head, self, first_text=welcome.text.encode())
        if self._resume or self._lost:
            self._kick()
            return
        self._started = True
        try:
            self.member.join()
        except Exception:
            self.log.exception("connection failed")
            self.abandon(CloseCode.INTERNAL_ERROR, "internal error")

    # -- Link -----------------------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        if self.closing:
            return
        if not self.outbox.push(frame, self._now()):
            self.evict("outbound buffer full")
        elif not self._flush_requested and not self.sock.paused:
            self._flush_requested = True
            self._flusher.request(self)

    def flush(self) -> None:
        """Write pending frames into the transport until it pushes back."""
        self._flush_requested = False
        sock = self.sock
        while not sock.paused and not self.closing:
            data = self.outbox.take(self._now())
            if data is None:
                break
            if not sock.send_text(data):  # closing: the close handshake owns the socket now
                return
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

    # -- the socket's side (WebSocketOwner) ---------------------------------------

    def on_text(self, text: str) -> None:
        self._receive(text)

    def on_binary(self, data: bytes) -> None:
        self._receive(data)

    def on_pong(self, data: bytes) -> None:
        if data == self._ping:
            self._ping = None

    def on_writable(self) -> None:
        if not self._flush_requested and not self.closing:
            self._flush_requested = True
            self._flusher.request(self)

    def on_lost(self) -> None:
        self._lost = True
        self.closing = True
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if self._worker is None and self._started and self._finish_now():
            return
        self._kick()

    def _receive(self, message: str | bytes) -> None:
        if self.closing:
            return
        if self._inbox is None:
            self._inbox = [message]
        else:
            self._inbox.append(message)
        self._kick()

    # -- the worker: start, client frames in order, finish -------------------------

    def _kick(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        try:
            while True:
                if not self._started:
                    self._started = True
                    resume, self._resume = self._resume, None
                    await self.member.start(resume or [])
                elif self._lost:
                    await self._finish()
                    return
                elif self._inbox and not self.session.closed:
                    message = self._inbox.pop(0)
                    if not self._inbox:
                        self._inbox = None
                    if isinstance(message, bytes):
                        actions = self.session.receive_binary()
                    else:
                        actions = self.session.receive(message, self._now())
                    await self.member.execute(actions)
                else:
                    return
        except Exception:
            self.log.exception("connection failed")
            self.abandon(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._worker = None
            if self._lost and self._on_done is not None:
                self._kick()  # the socket went while this ran: leave everything now

    async def _finish(self) -> None:
        """The socket is gone: leave every channel and the user's subject, once."""
        self._stop_tasks()
        on_done, self._on_done = self._on_done, None
        try:
            await self.member.finish()
        finally:
            self._done(on_done)

    def _finish_now(self) -> bool:
        """`_finish` without a task, when nothing needs awaiting (no channel joined:
        most connections of a reconnect storm); False if the worker must do it."""
        if self._on_done is None or not self.member.finish_now():
            return False
        self._stop_tasks()
        on_done, self._on_done = self._on_done, None
        self._done(on_done)
        return True

    def _stop_tasks(self) -> None:
        self.closing = True
        for task in tuple(self._tasks or ()):
            task.cancel()

    def _done(self, on_done: Callable[[Connection], None] | None) -> None:
        if on_done is not None:
            on_done(self)
        # The member and this link point at each other: unlinked, both go by
        # reference counting as soon as nothing else holds them.
        self.member.link = _GONE

    # -- the sweep: slow consumer, keepalive, expiry ----------------------------

    def tick(self, now: float, wall: float, ping_interval_s: float, ping_timeout_s: float) -> None:
        """The edge's periodic look at this connection (loop time `now`, wall clock
        `wall`): one call per connection and sweep, no timer of its own."""
        if self.closing:
            return
        if self.outbox.stalled(now):
            self.evict("peer not reading")
            return
        self.keepalive(now, ping_interval_s, ping_timeout_s)
        if wall >= self.session.claims.exp:
            self.check_expiry(wall)

    def keepalive(self, now: float, interval_s: float, timeout_s: float) -> None:
        """Ping every `interval_s`; a pong missing after `timeout_s` closes with 1011."""
        if self.closing:
            return
        if self._ping is not None:
            if now - self._ping_sent > timeout_s:
                self.closing = True
                self.closed_with = CloseCode.INTERNAL_ERROR
                self.sock.close(
                    CloseCode.INTERNAL_ERROR, "keepalive ping timeout", ABANDON_TIMEOUT_S
                )
            return
        if now - self._ping_sent >= interval_s and not self.sock.paused:
            self._ping_sent = now
            self._ping = next(_ping_ids).to_bytes(8, "big")
            self.sock.send_ping(self._ping)

    # -- expiry ---------------------------------------------------------------

    def check_expiry(self, now: float) -> None:
        """Close with 4001 once `exp` (wall clock) has passed; a `refresh` moves `exp`.

        Called by the edge's sweep, not from a timer per connection: a timer costs a
        heap entry per connection, and one that is cancelled at every disconnect."""
        if self.closing or now < self.session.claims.exp:
            return
        actions = self.session.check_expiry(now)
        if actions:
            self.spawn(self.member.execute(actions))

    # -- closing --------------------------------------------------------------

    async def close(self, code: int, reason: str) -> None:
        """Flush what is pending, then close with `code`; abort if the closing
        handshake has not ended within 2 s."""
        self.closing = True
        sock = self.sock
        while (data := self.outbox.take()) is not None and sock.send_text(data):
            pass
        sock.close(code, reason, CLOSE_TIMEOUT_S)
        if not self._lost:
            if self._gone is None:
                self._gone = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.shield(self._gone)
            except TimeoutError:
                sock.abort()
        self.closed_with = code

    def evict(self, why: str) -> None:
        """Slow consumer: close with 1013 without waiting on its full buffer."""
        if self.closing:
            return
        self.closing = True
        self.closed_with = CloseCode.TRY_AGAIN_LATER
        self.log.warning("evicting slow consumer: %s", why)
        self.node.metrics.evictions += 1
        self.outbox.clear()
        self.sock.close(CloseCode.TRY_AGAIN_LATER, "slow consumer", ABANDON_TIMEOUT_S)

    def abandon(self, code: int, reason: str) -> None:
        """Close without flushing; abort if the close frame cannot go out within 1 s."""
        self.closing = True
        self.sock.close(code, reason, ABANDON_TIMEOUT_S)

    @property
    def close_code(self) -> int:
        """The code this connection ended with: what we told the peer, else what it told us."""
        if self.closed_with is not None:
            return self.closed_with
        sent, received = self.sock.close_codes
        if sent is not None:
            return sent
        return ABNORMAL_CLOSURE if received is None else received
