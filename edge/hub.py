"""Routes backbone messages to local connections.

One backbone subscription per channel (and per user) in use on this edge,
reference-counted by the set of local members; never one per connection.
Each incoming message is decoded and encoded once, then the same text is
handed to every member's outbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from edge import protocol, tracing
from edge.ports import Backbone, Delivery, Interest, Member, SubscriptionHandle, Unavailable
from edge.presence import feed_subject
from switchboard.contract.channels import (
    PERSONAL_PREFIX,
    channel_subject,
    personal_channel,
    user_subject,
)
from switchboard.contract.codes import DISCONNECT_CODES, DISCONNECT_HEADER, CloseCode

log = logging.getLogger("switchboard.edge.hub")

HEADER_FROM = "Sb-From"
HEADER_TS = "Sb-Ts"
# The publish time in microseconds since the epoch: edges set it on client publishes,
# backends may; it feeds the delivery latency histogram (Sb-Ts has only milliseconds).
HEADER_TS_US = "Sb-Ts-Us"
STREAM_RETRY_S = 0.2  # between attempts to check a history stream after a reconnect


class _Topic:
    __slots__ = (
        "channel",
        "delivered",
        "epoch",
        "handle",
        "interest",
        "last_offset",
        "members",
        "stream",
    )

    def __init__(
        self,
        channel: str,
        handle: SubscriptionHandle | None,
        epoch: str | None,
        stream: str | None = None,
        delivered: int | None = None,
    ) -> None:
        self.channel = channel
        self.handle = handle
        self.epoch = epoch  # set for channels with history
        self.stream = stream
        self.last_offset: int | None = None  # newest offset members were handed or told
        # newest offset the stream consumer handed to members: a rebuilt consumer
        # starts after it, and anything at or below it is a repeat
        self.delivered = delivered
        self.members: set[Member] = set()
        self.interest: Interest | None = None  # a user's subject (`Hub.join_user`)


def decode_data(data: bytes) -> Any:
    """Backend payloads are JSON; other UTF-8 text is delivered as a string.

    "Other" includes JSON that could not be sent on as it is: not strict (NaN,
    1e999, lone surrogates) or nested deeper than `protocol.MAX_DEPTH`. So the
    result always encodes. Bytes that are not UTF-8 raise UnicodeDecodeError.
    """
    try:
        value = protocol.loads(data)
    except UnicodeDecodeError:
        raise
    except (ValueError, RecursionError):
        return data.decode()
    if not protocol.nesting_allowed(data, value, protocol.MAX_DEPTH):
        return data.decode()
    return value


def _timestamp(headers: Mapping[str, str]) -> int:
    """`Sb-Ts` if it is a plain integer of milliseconds, else the time now."""
    value = headers.get(HEADER_TS, "")
    if 0 < len(value) <= 16 and value.isascii() and value.isdigit():
        return int(value)
    return int(time.time() * 1000)


def stamp_headers() -> dict[str, str]:
    """`Sb-Ts` and `Sb-Ts-Us` for a message published now."""
    now_us = time.time_ns() // 1000
    return {HEADER_TS: str(now_us // 1000), HEADER_TS_US: str(now_us)}


def _text(value: str) -> str:
    """A header string that encodes as UTF-8 (nats-py already replaces bad bytes)."""
    if value.isascii():
        return value
    return value.encode("utf-8", "replace").decode()


class Hub:
    def __init__(
        self,
        backbone: Backbone,
        prefix: str,
        *,
        expose_publisher: bool,
        pod: str = "",
        stream_for: Callable[[str], str | None] = lambda channel: None,
        on_latency: Callable[[float], None] | None = None,
    ) -> None:
        self._backbone = backbone
        self._prefix = prefix
        self._expose_publisher = expose_publisher
        self._pod = pod
        self._stream_for = stream_for
        self._on_latency = on_latency  # seconds from publish to delivery, once per message
        self.epochs: dict[str, str] = {}  # stream -> epoch, as last read
        self._topics: dict[str, _Topic] = {}
        self._lock = asyncio.Lock()
        self.delivered = 0
        self.dropped = 0  # backbone messages not delivered (counted, logged: never silent)

    @property
    def subscription_count(self) -> int:
        return len(self._topics)

    async def join_channel(self, channel: str, member: Member) -> str | None:
        """Join; for a channel with history, its epoch."""
        subject = channel_subject(self._prefix, channel)
        stream = self._stream_for(channel)
        await self._join(subject, channel, member, stream=stream)
        return self._topics[subject].epoch

    def note_offset(self, channel: str, offset: int) -> None:
        """A subscriber was told `offset`: the topic's position is at least that."""
        topic = self._topics.get(channel_subject(self._prefix, channel))
        if topic is not None and (topic.last_offset is None or offset > topic.last_offset):
            topic.last_offset = offset

    def delivered_offset(self, channel: str) -> int | None:
        """Newest offset of `channel` the stream consumer handed to members (None: none)."""
        topic = self._topics.get(channel_subject(self._prefix, channel))
        return None if topic is None else topic.delivered

    def position(self, channel: str) -> dict[str, Any]:
        """`{offset, epoch}` of the newest event members of `channel` were handed."""
        topic = self._topics.get(channel_subject(self._prefix, channel))
        if topic is None or topic.epoch is None:
            return {"offset": None, "epoch": None}
        return {"offset": topic.last_offset, "epoch": topic.epoch}

    async def refresh_epoch(self, stream: str) -> str:
        """Read the stream's epoch again (it changes when the stream was recreated)."""
        epoch = await self._backbone.stream_epoch(stream)
        if self.epochs.get(stream) != epoch:
            self.epochs[stream] = epoch
            for topic in self._topics.values():
                if topic.epoch is not None and self._stream_for(topic.channel) == stream:
                    topic.epoch = epoch
        return epoch

    async def epoch(self, stream: str) -> str:
        if stream not in self.epochs:
            self.epochs[stream] = await self._backbone.stream_epoch(stream)
        return self.epochs[stream]

    async def leave_channel(self, channel: str, member: Member) -> None:
        await self._leave(channel_subject(self._prefix, channel), member)

    def join_user(self, user: str, member: Member) -> None:
        """Join the user's personal subject, at once and unconfirmed: nothing the client
        does depends on it being in place already, and waiting would cost every
        handshake a task and a round trip to NATS. No lock: only this and `leave_user`
        touch user subjects, and neither awaits."""
        subject = user_subject(self._prefix, user)
        topic = self._topics.get(subject)
        if topic is None:
            channel = personal_channel(user)
            interest = self._backbone.subscribe_now(
                subject, lambda d: self._deliver(channel, subject, d)
            )
            topic = _Topic(channel, None, None)
            topic.interest = interest
            self._topics[subject] = topic
        topic.members.add(member)

    def leave_user(self, user: str, member: Member) -> None:
        topic = self._without(user_subject(self._prefix, user), member)
        if topic is not None and topic.interest is not None:
            topic.interest.drop()

    def _without(self, subject: str, member: Member) -> _Topic | None:
        """Take `member` out of the subject's topic; the topic if it is now empty (and
        gone from the hub: its subscription is the caller's to end)."""
        topic = self._topics.get(subject)
        if topic is None:
            return None
        topic.members.discard(member)
        if topic.members:
            return None
        del self._topics[subject]
        return topic

    async def join_presence_feed(self, channel: str, member: Member) -> None:
        """`join`/`leave` frames of a presence channel (edges publish them ready-made)."""
        await self._join(feed_subject(self._prefix, channel), channel, member, raw=True)

    async def leave_presence_feed(self, channel: str, member: Member) -> None:
        await self._leave(feed_subject(self._prefix, channel), member)

    async def _join(
        self,
        subject: str,
        channel: str,
        member: Member,
        *,
        raw: bool = False,
        stream: str | None = None,
    ) -> None:
        async with self._lock:
            topic = self._topics.get(subject)
            if topic is None:
                deliver = self._forward if raw else self._deliver
                if stream is not None:  # offsets come from JetStream
                    epoch = await self.epoch(stream)
                    start = await self._backbone.stream_last_offset(stream, subject)
                    topic = _Topic(channel, None, epoch, stream, delivered=start)
                    # Found before its consumer exists: what the consumer hands on
                    # while `subscribe_stream` is still awaited counts in `delivered`,
                    # so a replay reads it from the stream. Not found, it was lost to
                    # a client recovering from just before it.
                    self._topics[subject] = topic
                    try:
                        topic.handle = await self._backbone.subscribe_stream(
                            subject, stream, lambda d: deliver(channel, subject, d), start=start + 1
                        )
                    except BaseException:  # (the lock is held: no member joined it)
                        if self._topics.get(subject) is topic:
                            del self._topics[subject]
                        raise
                else:
                    handle = await self._backbone.subscribe(
                        subject, lambda d: deliver(channel, subject, d)
                    )
                    topic = _Topic(channel, handle, None)
                    self._topics[subject] = topic
            topic.members.add(member)

    async def _leave(self, subject: str, member: Member) -> None:
        async with self._lock:
            topic = self._without(subject, member)
            if topic is not None and topic.handle is not None:
                await topic.handle.unsubscribe()

    def notify_gap(self, since_ms: int, until_ms: int) -> None:
        """Tell members of channels without history that messages between the two
        times may be lost.

        Called after the backbone reconnects: core NATS does not replay what was
        published while this edge was cut off (DESIGN: gaps are always reported).
        Channels with history lose nothing: `resume_streams` reads on from JetStream.
        """
        for topic in self._topics.values():
            if topic.stream is None:
                self._gap(topic, since_ms, until_ms)

    @staticmethod
    def _gap(topic: _Topic, since_ms: int, until_ms: int) -> None:
        frame = protocol.frame(
            "gap", {"channel": topic.channel, "since_ts": since_ms, "until_ts": until_ms}
        ).encode()
        for member in tuple(topic.members):
            member.deliver(frame)

    async def resume_streams(self, since_ms: int) -> None:
        """After the backbone returns, check that every history channel can read on.

        Each stream consumer resumes by itself from the last offset it handed out
        (the backbone rebuilds it); a channel whose stream was recreated meanwhile
        (new epoch) cannot be continued: it starts again from the newest offset, with
        a `gap`. Streams are checked at once, not in turn: one that is still electing
        a leader does not hold up the others.
        """
        streams = {topic.stream for topic in self._topics.values() if topic.stream is not None}
        await asyncio.gather(*(self._resume_stream(stream, since_ms) for stream in streams))

    async def _resume_stream(self, stream: str, since_ms: int) -> None:
        while self._backbone.connected:
            topics = [(s, t) for s, t in self._topics.items() if t.stream == stream]
            if not topics:
                return  # everyone left meanwhile
            try:
                epoch = await self._backbone.stream_epoch(stream)
                self.epochs[stream] = epoch
                for subject, topic in topics:
                    if topic.epoch != epoch or topic.handle is None:
                        await self._restart_topic(subject, topic, epoch, since_ms)
                return
            except Unavailable as exc:
                log.warning("history of %s not checked yet: %s", stream, exc)
                await asyncio.sleep(STREAM_RETRY_S)

    async def _restart_topic(self, subject: str, topic: _Topic, epoch: str, since_ms: int) -> None:
        """Follow the topic's stream again; if it was recreated, from its newest offset."""
        assert topic.stream is not None
        async with self._lock:
            if self._topics.get(subject) is not topic:
                return  # everyone left meanwhile
            old, topic.handle = topic.handle, None
            if old is not None:
                await old.unsubscribe()
            if epoch != topic.epoch or topic.delivered is None:
                topic.delivered = await self._backbone.stream_last_offset(topic.stream, subject)
                topic.epoch = epoch
                self._gap(topic, since_ms, int(time.time() * 1000))
            channel = topic.channel
            topic.handle = await self._backbone.subscribe_stream(
                subject,
                topic.stream,
                lambda d: self._deliver(channel, subject, d),
                start=topic.delivered + 1,
            )

    def _forward(self, channel: str, subject: str, delivery: Delivery) -> None:
        """Hand an already-encoded server frame to every member as it is."""
        topic = self._topics.get(subject)
        if topic is None:
            return
        if not _well_formed_frame(delivery.data):  # only frames clients can read go out
            self.dropped += 1
            log.warning("dropped a malformed presence frame", extra={"subject": subject})
            return
        for member in tuple(topic.members):
            member.deliver(delivery.data)

    def _deliver(self, channel: str, subject: str, delivery: Delivery) -> None:
        topic = self._topics.get(subject)
        if topic is None:
            return
        if delivery.offset is not None:
            if topic.delivered is not None and delivery.offset <= topic.delivered:
                return  # a rebuilt consumer's repeat: members have it already
            topic.delivered = delivery.offset  # also with no member yet (`_join`)
        if not topic.members:
            return
        if delivery.headers and DISCONNECT_HEADER in delivery.headers:
            self._disconnect(topic, delivery)
            return
        span = tracing.start_delivery(delivery.subject, delivery.headers, self._pod)
        try:
            data = decode_data(delivery.data)
            frame = (
                self.encode_event(channel, data, delivery.headers).encode()  # once per edge
                if delivery.offset is None
                else self.stored_event(channel, data, delivery, topic.epoch)
            )
        except (ValueError, RecursionError) as exc:  # not UTF-8 (decode_data's output
            # always encodes, so anything else is a broken invariant): counted, never silent
            self.dropped += 1
            reason = "not utf-8" if isinstance(exc, UnicodeDecodeError) else "not encodable"
            log.warning("dropped a message: %s", reason, extra={"subject": delivery.subject})
            if span is not None:
                span.set_attribute("error.type", reason)
                tracing.end_delivery(span, len(delivery.data), 0)
            return
        if delivery.offset is None:
            for member in tuple(topic.members):
                member.deliver(frame)
        else:
            topic.last_offset = max(delivery.offset, topic.last_offset or 0)
            for member in tuple(topic.members):
                member.deliver_stored(channel, delivery.offset, frame)
        self.delivered += len(topic.members)
        if self._on_latency is not None and delivery.headers:
            self._latency(delivery.headers.get(HEADER_TS_US))
        if span is not None:
            tracing.end_delivery(span, len(delivery.data), len(topic.members))

    def _disconnect(self, topic: _Topic, delivery: Delivery) -> None:
        """Close every member of a user's subject with the code a backend asked for."""
        assert delivery.headers is not None
        raw = delivery.headers[DISCONNECT_HEADER]
        if not topic.channel.startswith(PERSONAL_PREFIX) or not raw.isdigit():
            self.dropped += 1
            log.warning("ignored a disconnect", extra={"subject": delivery.subject})
            return
        code = int(raw) if int(raw) in DISCONNECT_CODES else int(CloseCode.FORBIDDEN)
        reason = delivery.data.decode(errors="replace")[:120] or "revoked"
        for member in tuple(topic.members):
            member.disconnect(code, reason)
        log.info("disconnected a user", extra={"subject": delivery.subject, "code": code})

    def _latency(self, stamp: str | None) -> None:
        """Publish → handed to every member: from `Sb-Ts-Us` when it is plain digits."""
        if stamp is not None and 0 < len(stamp) <= 19 and stamp.isascii() and stamp.isdigit():
            assert self._on_latency is not None
            self._on_latency(time.time() - int(stamp) / 1e6)

    def stored_event(self, channel: str, data: Any, delivery: Delivery, epoch: str | None) -> bytes:
        """An event of a channel with history: it carries its offset and epoch."""
        extra = {"offset": delivery.offset, "epoch": epoch}
        return self.encode_event(channel, data, delivery.headers, extra).encode()

    def encode_event(
        self,
        channel: str,
        data: Any,
        headers: Mapping[str, str] | None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """The `event` frame; for `data` from decode_data it always encodes as UTF-8."""
        headers = headers or {}
        sender = headers.get(HEADER_FROM) if self._expose_publisher else None
        if sender is not None:
            sender = _text(sender)
        return protocol.event_frame(
            channel, data, ts=_timestamp(headers), sender=sender, extra=extra
        )


def _well_formed_frame(data: bytes) -> bool:
    """A ready-made server frame: a strict JSON object on one line, nested within limits."""
    if b"\n" in data:
        return False
    try:
        value = protocol.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and protocol.nesting_allowed(data, value, protocol.FRAME_DEPTH)
