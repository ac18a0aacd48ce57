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
from edge.ports import Delivery, NoResponders, RequestTimeout, Unavailable
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
from switchboard.contract.channels import channel_subject, rpc_subject
from switchboard.contract.codes import CloseCode, ErrorCode
from switchboard.contract.tokens import Claims

if TYPE_CHECKING:
    from edge.server import EdgeServer

log = logging.getLogger("switchboard.edge.connection")

REPLAY_BATCH_BYTES = 256 * 1024  # read from the stream per batch, at the largest message size
REPLAY_BATCH_MAX = 256  # messages per batch
REPLAY_WAIT_S = 1.0  # for a batch the stream does not have yet
REPLAY_EMPTY_TRIES = 3  # empty batches before the replay stops looking for the rest


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
        "_floors",
        "_flush_requested",
        "_joined_user",
        "_log",
        "_now",
        "_ping_sent",
        "_pong",
        "_present",
        "_recovering",
        "_replay_lock",
        "_replays",
        "_room",
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
        # channel -> last offset replayed so far, while its history is replayed; live
        # events of the channel are left to the replay, which reads them from the stream
        self._recovering: dict[str, int] | None = None
        # channel -> last offset replayed: live events up to it are repeats (dropped)
        self._floors: dict[str, int] | None = None
        self._replays: dict[str, asyncio.Task[None]] | None = None
        self._replay_lock: asyncio.Lock | None = None  # one replay at a time: one batch
        self._room: asyncio.Event | None = None  # set when the outbox drained (replay waits)
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
        if self._recovering and channel in self._recovering:
            return  # stored: the replay reads it from the stream in its turn
        floors = self._floors
        if floors and channel in floors:
            if offset <= floors[channel]:
                return  # the replay delivered it already
            del floors[channel]  # live is past the replay: no repeat can follow
        self.deliver(frame)

    def position(self, channel: str) -> dict[str, Any]:
        """`{offset, epoch}` of the newest event of `channel` handed to this connection."""
        position = self.server.hub.position(channel)
        if self._recovering and channel in self._recovering:
            position["offset"] = self._recovering[channel]
        return position

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
                break
            try:
                ws.protocol.send_text(data)
            except InvalidState:  # closing: the close handshake owns the socket now
                return
            ws.send_data()
            if ws.transport.get_write_buffer_size() > ws.write_limit_high:
                self._blocked = True
                self._spawn(self._wait_writable())
        room = self._room
        if room is not None and self.outbox.pending_bytes <= self._replay_budget:
            room.set()

    @property
    def _replay_budget(self) -> int:
        """Outbox bytes a replay may fill: the rest stays free for live traffic."""
        return self.server.settings.outbox_max_bytes // 2

    async def _room_for(self, size: int) -> None:
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
            for task in (*(self._tasks or ()), *(self._replays or {}).values()):
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
            # from joining on, live events of the channel are left to the replay
            self._recovering = self._recovering or {}
            self._recovering[channel] = action.since.offset
        try:
            epoch = await hub.join_channel(channel, self)
            payload: dict[str, Any] = {
                "channel": channel,
                "offset": None,
                "epoch": epoch,
                "recovered": False,
            }
            start: int | None = None
            if stream is not None and epoch is not None:
                start = await self._recover(stream, channel, action, payload)
        except Unavailable as exc:
            self._stop_recovering(channel, None)
            self.session.subscribe_failed(channel)
            await hub.leave_channel(channel, self)
            self._error(action.request_id, ErrorCode.UNAVAILABLE, str(exc))
            return
        if payload["offset"] is not None:
            hub.note_offset(channel, payload["offset"])
        self.send(protocol.ack(action.request_id, payload))
        if start is not None and stream is not None:
            self._start_replay(channel, stream, start, payload["epoch"])
        if self.server.policy_for(action.channel).presence:
            await self._enter_presence(action.channel)

    async def _recover(
        self, stream: str, channel: str, action: Subscribe, payload: dict[str, Any]
    ) -> int | None:
        """Fill in the ack's position; the offset to replay from, if the client asked
        for what it missed.

        `recovered` is true only when everything after `since` is still stored
        under the same epoch; otherwise the client is told (never a silent gap)
        and goes on from the newest offset.
        """
        backbone = self.server.backbone
        subject = channel_subject(self.server.settings.subject_prefix, channel)
        epoch = await self.server.hub.refresh_epoch(stream)  # recreated since? ask now
        payload["epoch"] = epoch
        last = await backbone.stream_last_offset(stream, subject)
        payload["offset"] = last
        since = action.since
        if since is None:
            return None
        if since.epoch == epoch and since.offset + 1 >= await backbone.stream_first_offset(stream):
            payload["recovered"] = True
            return since.offset + 1
        return last + 1  # what arrived since the ack's offset is still owed

    def _start_replay(self, channel: str, stream: str, start: int, epoch: str) -> None:
        """Replay from `start` in the background: the client's other requests go on."""
        assert self._recovering is not None
        self._recovering[channel] = start - 1
        if self._replays is None:
            self._replays = {}
        task = asyncio.create_task(self._replay(channel, stream, start, epoch))
        self._replays[channel] = task
        task.add_done_callback(lambda done: self._forget_replay(channel, done))

    def _forget_replay(self, channel: str, task: asyncio.Task[None]) -> None:
        """A finished replay leaves; one started later for the same channel stays."""
        if self._replays and self._replays.get(channel) is task:
            del self._replays[channel]

    async def _replay(self, channel: str, stream: str, start: int, epoch: str) -> None:
        """Stored events from `start` until the replay meets the live feed.

        A batch is read only once the client has taken most of the last one
        (`_room_for`), so any backlog costs one batch of memory and no deadline
        applies while the client reads; a client that stops reading is evicted
        by the outbox's usual rule. Live events of the channel are dropped
        meanwhile and read from the stream instead; the switch to live happens
        without an await, once the replay has reached what the feed handed out.
        """
        if self._replay_lock is None:
            self._replay_lock = asyncio.Lock()
        hub = self.server.hub
        subject = channel_subject(self.server.settings.subject_prefix, channel)
        size = self.server.policy_for(channel).max_message_bytes
        batch = max(1, min(REPLAY_BATCH_MAX, REPLAY_BATCH_BYTES // size))
        async with self._replay_lock:
            cursor = None
            try:
                cursor = await self.server.backbone.open_cursor(stream, subject, start)
                empty = 0
                while not self._closing:
                    done = self._recovering[channel] if self._recovering else start - 1
                    if done >= (hub.delivered_offset(channel) or 0):
                        break  # caught up with the live feed
                    deliveries = await cursor.fetch(batch, REPLAY_WAIT_S)
                    empty = 0 if deliveries else empty + 1
                    if empty >= REPLAY_EMPTY_TRIES:
                        self.log.warning("replay of %s found nothing more; going live", channel)
                        break
                    for delivery in deliveries:
                        await self._replay_one(channel, delivery, epoch)
            except Unavailable as exc:
                # the client has all events up to its last offset: it resumes from there
                self.log.warning("replay of %s interrupted: %s", channel, exc)
                self._stop_recovering(channel, None)
                self._spawn(self._abandon(CloseCode.TRY_AGAIN_LATER, "recovery interrupted"))
                return
            finally:
                if cursor is not None:
                    await cursor.close()
            if self._recovering and channel in self._recovering:
                self._stop_recovering(channel, self._recovering[channel])

    async def _replay_one(self, channel: str, delivery: Delivery, epoch: str) -> None:
        recovering = self._recovering
        if not recovering or channel not in recovering or delivery.offset is None:
            return
        if delivery.offset <= recovering[channel]:
            return
        hub = self.server.hub
        try:
            frame = hub.stored_event(channel, decode_data(delivery.data), delivery, epoch)
        except (ValueError, RecursionError):  # not sent live either: counted there and here
            hub.dropped += 1
            self.log.warning("replay skipped an undeliverable message at %s", delivery.offset)
        else:
            await self._room_for(len(frame))
            if self._closing or channel not in recovering:
                return
            self.deliver(frame)
        recovering[channel] = delivery.offset

    def _stop_recovering(self, channel: str, replayed_to: int | None) -> None:
        """Back to live: events of the channel up to `replayed_to` are repeats."""
        if self._recovering is not None:
            self._recovering.pop(channel, None)
            if not self._recovering:
                self._recovering = None
        if replayed_to is not None:
            if self._floors is None:
                self._floors = {}
            self._floors[channel] = replayed_to

    async def _enter_presence(self, channel: str) -> None:
        if self._present is None:
            self._present = set()
        if channel in self._present:
            return
        self._present.add(channel)
        await self.server.hub.join_presence_feed(channel, self)
        await self.server.presence.enter(channel, self.session.user)

    async def _leave_channel(self, channel: str) -> None:
        replay = self._replays.get(channel) if self._replays else None
        if replay is not None:
            replay.cancel()
        self._stop_recovering(channel, None)
        if self._floors:
            self._floors.pop(channel, None)
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
