"""The asyncio adapter for one client: moves bytes between the socket and the Session.

It carries out the Session's actions (sends, hub joins, NATS publishes and
RPCs) and owns the connection's bounded Outbox. Frames leave through the
shared Flusher, written straight into the transport while it accepts data;
when the transport pushes back, one short-lived task waits for it to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidState

from edge import protocol, tracing
from edge.hub import HEADER_FROM, HEADER_TS, decode_data
from edge.outbox import Outbox
from edge.ports import NoResponders, RequestTimeout, Unavailable
from edge.session import (
    Action,
    Close,
    PresenceQuery,
    Publish,
    Rpc,
    Send,
    Session,
    Subscribe,
    Unsubscribe,
)
from edge.tracing import SpanKind
from switchboard.channels import channel_subject, rpc_subject
from switchboard.codes import CloseCode, ErrorCode
from switchboard.tokens import Claims

if TYPE_CHECKING:
    from edge.server import EdgeServer

log = logging.getLogger("switchboard.edge.connection")

MAX_HELD = 10_000  # live events kept back per channel while its history is replayed


class EdgeConnection(ServerConnection):
    """websockets' connection, plus the claims established during the upgrade."""

    claims: Claims | None = None
    resume: list[dict[str, Any]] | None = None  # subscriptions to restore (`?resume=`)


class Connection:
    """Glue between one websockets connection, its Session and the hub."""

    __slots__ = (
        "_blocked",
        "_closing",
        "_expiry",
        "_flush_requested",
        "_held",
        "_joined_user",
        "_log",
        "_now",
        "_ping_sent",
        "_pong",
        "_present",
        "_tasks",
        "closed_with",
        "id",
        "outbox",
        "server",
        "session",
        "ws",
    )

    def __init__(self, server: EdgeServer, ws: EdgeConnection, session: Session, cid: str) -> None:
        self.server = server
        self.ws = ws
        self.session = session
        self.id = cid
        self.outbox = Outbox(
            server.settings.outbox_max_bytes, server.settings.slow_consumer_grace_s
        )
        self._log: logging.LoggerAdapter[logging.Logger] | None = None
        self._flush_requested = False
        self._blocked = False  # the transport is over its high-water mark
        self._tasks: set[asyncio.Task[None]] | None = None  # made when first needed
        self._expiry: asyncio.TimerHandle | None = None
        self._pong: asyncio.Future[float] | None = None
        self._ping_sent = asyncio.get_running_loop().time()
        self._closing = False
        self._joined_user = False
        self._present: set[str] | None = None  # presence channels this connection is in
        self._held: dict[str, list[tuple[int, bytes]]] | None = None  # live events held back
        # while a channel's history is replayed
        self.closed_with: int | None = None
        self._now: Callable[[], float] = asyncio.get_running_loop().time

    # -- Member ---------------------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        if self._closing:
            return
        if not self.outbox.push(frame, self._now()):
            self.evict("outbound buffer full")
        elif not self._flush_requested and not self._blocked:
            self._flush_requested = True
            self.server.flusher.request(self)

    def deliver_stored(self, channel: str, offset: int, frame: bytes) -> None:
        held = self._held.get(channel) if self._held else None
        if held is None:
            self.deliver(frame)
        elif len(held) < MAX_HELD:
            held.append((offset, frame))
        else:  # cannot keep the order without unbounded memory: the client must start over
            self.evict("too many live events while recovering")

    def send(self, text: str) -> None:
        """Queue a frame made for this connection only (acks, errors, welcome)."""
        self.deliver(text.encode())

    def flush(self) -> None:
        """Write pending frames into the transport until it pushes back."""
        self._flush_requested = False
        ws = self.ws
        while not self._blocked and not self._closing:
            data = self.outbox.take(self._now())
            if data is None:
                return
            try:
                ws.protocol.send_text(data)
            except InvalidState:  # closing: the close handshake owns the socket now
                return
            ws.send_data()
            if ws.transport.get_write_buffer_size() > ws.write_limit_high:
                self._blocked = True
                self._spawn(self._wait_writable())

    async def _wait_writable(self) -> None:
        try:
            await self.ws.drain()
        except (ConnectionClosed, OSError):
            return
        self._blocked = False
        self.flush()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
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
        return {"conn": self.id, "user": self.session.user, "pod": self.server.settings.pod_name}

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
                self._spawn(self._abandon(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"))
            return
        if now - self._ping_sent >= interval_s and not self._blocked:
            self._ping_sent = now
            self._spawn(self._ping())

    async def _ping(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            # websockets returns the pong future it resolves (typed as an Awaitable)
            self._pong = cast("asyncio.Future[float]", await self.ws.ping())

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        hub = self.server.hub
        self.send(
            self.session.welcome(
                self.id, self.server.settings.pod_name, self.server.settings.ping_interval_s
            ).text
        )
        self._schedule_expiry()
        try:
            await hub.join_user(self.session.user, self)
            self._joined_user = True
            await self._restore(self.ws.resume or [])
            async for message in self.ws:
                if isinstance(message, bytes):
                    actions = self.session.receive_binary()
                else:
                    actions = self.session.receive(message, self._now())
                await self._execute(actions)
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
            await self._leave_all()

    async def _restore(self, subscriptions: list[dict[str, Any]]) -> None:
        """Subscribe again to what a resume token lists, from its offsets.

        Each goes through the same checks as a client's own `subscribe`; the
        answers are acks (or errors) with id `resume:<channel>`.
        """
        for sub in subscriptions:
            payload: dict[str, Any] = {"channel": sub.get("channel")}
            if sub.get("offset") is not None:
                payload["since"] = {"offset": sub["offset"], "epoch": sub.get("epoch")}
            request = {
                "type": "subscribe",
                "id": f"resume:{sub.get('channel')}",
                "payload": payload,
            }
            await self._execute(self.session.receive(protocol.encode(request), self._now()))

    async def _leave_all(self) -> None:
        hub = self.server.hub
        for channel in tuple(self.session.subscriptions):
            await self._leave_channel(channel)
        self.session.subscriptions.clear()
        if self._joined_user:
            await hub.leave_user(self.session.user, self)

    def _schedule_expiry(self) -> None:
        """Close with 4001 once `exp` passes; a `refresh` moves `exp` and the wait goes on."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.session.claims.exp - time.time()) + 0.05
        self._expiry = loop.call_later(delay, self._check_expiry)

    def _check_expiry(self) -> None:
        actions = self.session.check_expiry(time.time())
        if actions:
            self._spawn(self._execute(actions))
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
        self.server.metrics.evictions += 1
        self.outbox.clear()
        self._spawn(self._abandon(CloseCode.TRY_AGAIN_LATER, "slow consumer"))

    async def _abandon(self, code: int, reason: str) -> None:
        """Close without flushing; abort if the close frame cannot go out within 1 s."""
        try:
            async with asyncio.timeout(1.0):
                await self.ws.close(code, reason)
        except (TimeoutError, ConnectionClosed):
            pass
        finally:
            self.ws.transport.abort()

    # -- actions --------------------------------------------------------------

    async def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(text):
                    self.send(text)
                case Close(code, reason):
                    await self.close(code, reason)
                case Subscribe():
                    await self._subscribe(action)
                case Unsubscribe(request_id, channel):
                    await self._leave_channel(channel)
                    self.send(protocol.ack(request_id, {"channel": channel}))
                case PresenceQuery(request_id, channel):
                    await self._presence_query(request_id, channel)
                case Publish():
                    await self._publish(action)
                case Rpc():
                    self._spawn(self._rpc(action))

    def _error(self, request_id: str | None, code: ErrorCode, message: str) -> None:
        for action in self.session.refuse(request_id, code, message, self._now()):
            if isinstance(action, Send):
                self.send(action.text)

    async def _subscribe(self, action: Subscribe) -> None:
        hub, channel = self.server.hub, action.channel
        stream = self.server.directory.stream_for(channel)
        if stream is not None and action.since is not None:
            self._hold(channel)  # from joining on, live events wait for the replay
        try:
            epoch = await hub.join_channel(channel, self)
            payload: dict[str, Any] = {
                "channel": channel,
                "offset": None,
                "epoch": epoch,
                "recovered": False,
            }
            replay: list[bytes] = []
            if stream is not None and epoch is not None:
                replay = await self._recover(stream, channel, epoch, action, payload)
        except Unavailable as exc:
            self._release(channel, None)
            self.session.subscribe_failed(channel)
            await hub.leave_channel(channel, self)
            self._error(action.request_id, ErrorCode.UNAVAILABLE, str(exc))
            return
        if payload["offset"] is not None:
            hub.note_offset(channel, payload["offset"])
        self.send(protocol.ack(action.request_id, payload))
        for frame in replay:
            self.deliver(frame)
        self._release(channel, payload["offset"])
        if self.server.policy_for(action.channel).presence:
            await self._enter_presence(action.channel)

    async def _recover(
        self, stream: str, channel: str, epoch: str, action: Subscribe, payload: dict[str, Any]
    ) -> list[bytes]:
        """Fill in the ack's position; the stored events the client missed, if any.

        `recovered` is true only when everything after `since` is still stored
        under the same epoch; otherwise the client is told (never a silent gap).
        """
        backbone = self.server.backbone
        subject = channel_subject(self.server.settings.subject_prefix, channel)
        epoch = await self.server.hub.refresh_epoch(stream)  # recreated since? ask now
        payload["epoch"] = epoch
        last = await backbone.stream_last_offset(stream, subject)
        payload["offset"] = last
        since = action.since
        if since is None or since.epoch != epoch:
            return []
        if since.offset + 1 < await backbone.stream_first_offset(stream):
            return []  # part of what followed `since` is gone
        payload["recovered"] = True
        if since.offset >= last:
            return []
        frames = []
        for delivery in await backbone.stream_replay(stream, subject, since.offset + 1, last):
            try:
                data = decode_data(delivery.data)
            except UnicodeDecodeError:
                continue
            frames.append(self.server.hub.stored_event(channel, data, delivery, epoch))
        return frames

    def _hold(self, channel: str) -> None:
        if self._held is None:
            self._held = {}
        self._held[channel] = []

    def _release(self, channel: str, replayed_to: int | None) -> None:
        """Deliver the live events held during the replay that it did not cover."""
        if not self._held or channel not in self._held:
            return
        for offset, frame in self._held.pop(channel):
            if replayed_to is not None and offset > replayed_to:
                self.deliver(frame)
        if not self._held:
            self._held = None

    async def _enter_presence(self, channel: str) -> None:
        if self._present is None:
            self._present = set()
        if channel in self._present:
            return
        self._present.add(channel)
        await self.server.hub.join_presence_feed(channel, self)
        await self.server.presence.enter(channel, self.session.user)

    async def _leave_channel(self, channel: str) -> None:
        await self.server.hub.leave_channel(channel, self)
        if self._present and channel in self._present:
            self._present.discard(channel)
            await self.server.hub.leave_presence_feed(channel, self)
            await self.server.presence.leave(channel, self.session.user)

    async def _presence_query(self, request_id: str | None, channel: str) -> None:
        try:
            users = await self.server.presence.users(channel)
        except Unavailable as exc:
            self._error(request_id, ErrorCode.UNAVAILABLE, str(exc))
            return
        self.send(protocol.ack(request_id, {"channel": channel, "users": users}))

    async def _publish(self, action: Publish) -> None:
        headers = {HEADER_FROM: self.session.user, HEADER_TS: str(int(time.time() * 1000))}
        if action.msg_id is not None:
            headers["Nats-Msg-Id"] = action.msg_id
        subject = channel_subject(self.server.settings.subject_prefix, action.channel)
        with tracing.tracer().start_as_current_span(
            "sb.publish", kind=SpanKind.PRODUCER, attributes=self._span_attributes(subject)
        ) as span:
            tracing.inject(headers, span)
            ack: dict[str, Any] = {"channel": action.channel}
            stream = self.server.directory.stream_for(action.channel)
            try:
                if stream is None:
                    await self.server.backbone.publish(subject, action.body, headers)
                else:  # stored; a repeated msg_id is acked with the original offset
                    ack["offset"] = await self.server.backbone.stream_publish(
                        subject, action.body, headers, stream
                    )
                    ack["epoch"] = await self.server.hub.epoch(stream)
            except Unavailable as exc:
                span.set_attribute("sb.error", "unavailable")
                self._error(action.request_id, ErrorCode.UNAVAILABLE, f"not accepted: {exc}")
                return
        self.server.metrics.publishes += 1
        self.server.directory.count_publish(action.channel)
        self.send(protocol.ack(action.request_id, ack))

    def _span_attributes(self, subject: str) -> dict[str, str]:
        return {
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "enduser.id": self.session.user,
            "sb.conn": self.id,
            "sb.pod": self.server.settings.pod_name,
        }

    async def _rpc(self, action: Rpc) -> None:
        subject = rpc_subject(self.server.settings.subject_prefix, action.method)
        headers = {HEADER_FROM: self.session.user, "Sb-Conn": self.id}
        with tracing.tracer().start_as_current_span(
            "sb.rpc", kind=SpanKind.CLIENT, attributes=self._span_attributes(subject)
        ) as span:
            tracing.inject(headers, span)
            await self._rpc_request(action, subject, headers)

    async def _rpc_request(self, action: Rpc, subject: str, headers: dict[str, str]) -> None:
        try:
            reply = await self.server.backbone.request(
                subject, action.body, headers, action.timeout_s
            )
            error_code = (reply.headers or {}).get("Sb-Error")
            if error_code:
                self.server.record_error(error_code)
                self.send(
                    protocol.frame(
                        "error",
                        {
                            "code": error_code,
                            "message": reply.data.decode(errors="replace"),
                            "retryable": False,
                        },
                        action.request_id,
                    )
                )
            else:
                data = decode_data(reply.data) if reply.data else None
                self.send(protocol.frame("rpc_response", {"data": data}, action.request_id))
        except NoResponders:
            self._error(action.request_id, ErrorCode.NOT_FOUND, f"no backend for '{action.method}'")
        except RequestTimeout:
            self._error(action.request_id, ErrorCode.TIMEOUT, f"'{action.method}' timed out")
        except Unavailable as exc:
            self._error(action.request_id, ErrorCode.UNAVAILABLE, str(exc))
        except UnicodeDecodeError:
            self._error(action.request_id, ErrorCode.INTERNAL, "backend reply is not UTF-8")
        finally:
            self.session.rpc_finished()
