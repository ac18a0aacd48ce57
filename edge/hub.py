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
from edge.ports import Backbone, Delivery, Member, SubscriptionHandle
from edge.presence import feed_subject
from switchboard.channels import channel_subject, personal_channel, user_subject

log = logging.getLogger("switchboard.edge.hub")

HEADER_FROM = "Sb-From"
HEADER_TS = "Sb-Ts"


class _Topic:
    __slots__ = ("channel", "epoch", "handle", "last_offset", "members")

    def __init__(self, channel: str, handle: SubscriptionHandle, epoch: str | None) -> None:
        self.channel = channel
        self.handle = handle
        self.epoch = epoch  # set for channels with history
        self.last_offset: int | None = None  # of the newest event handed to members
        self.members: set[Member] = set()


def decode_data(data: bytes) -> Any:
    """Backend payloads are JSON; other UTF-8 text is delivered as a string."""
    try:
        return protocol.loads(data)
    except UnicodeDecodeError:
        raise
    except (ValueError, RecursionError):
        return data.decode()


class Hub:
    def __init__(
        self,
        backbone: Backbone,
        prefix: str,
        *,
        expose_publisher: bool,
        pod: str = "",
        stream_for: Callable[[str], str | None] = lambda channel: None,
    ) -> None:
        self._backbone = backbone
        self._prefix = prefix
        self._expose_publisher = expose_publisher
        self._pod = pod
        self._stream_for = stream_for
        self.epochs: dict[str, str] = {}  # stream -> epoch, as last read
        self._topics: dict[str, _Topic] = {}
        self._lock = asyncio.Lock()
        self.delivered = 0
        self.dropped_undecodable = 0

    @property
    def subscription_count(self) -> int:
        return len(self._topics)

    async def join_channel(self, channel: str, member: Member) -> str | None:
        """Join; for a channel with history, its epoch."""
        subject = channel_subject(self._prefix, channel)
        stream = self._stream_for(channel)
        await self._join(subject, channel, member, confirm=True, stream=stream)
        return self._topics[subject].epoch

    def note_offset(self, channel: str, offset: int) -> None:
        """A subscriber was told `offset`: the topic's position is at least that."""
        topic = self._topics.get(channel_subject(self._prefix, channel))
        if topic is not None and (topic.last_offset is None or offset > topic.last_offset):
            topic.last_offset = offset

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

    async def join_user(self, user: str, member: Member) -> None:
        # Not confirmed: nothing the client does depends on it being in place already,
        # and it would cost every handshake two round trips to NATS.
        await self._join(
            user_subject(self._prefix, user), personal_channel(user), member, confirm=False
        )

    async def leave_user(self, user: str, member: Member) -> None:
        await self._leave(user_subject(self._prefix, user), member)

    async def join_presence_feed(self, channel: str, member: Member) -> None:
        """`join`/`leave` frames of a presence channel (edges publish them ready-made)."""
        await self._join(
            feed_subject(self._prefix, channel), channel, member, confirm=True, raw=True
        )

    async def leave_presence_feed(self, channel: str, member: Member) -> None:
        await self._leave(feed_subject(self._prefix, channel), member)

    async def _join(
        self,
        subject: str,
        channel: str,
        member: Member,
        *,
        confirm: bool,
        raw: bool = False,
        stream: str | None = None,
    ) -> None:
        async with self._lock:
            topic = self._topics.get(subject)
            if topic is None:
                deliver = self._forward if raw else self._deliver
                epoch: str | None = None
                if stream is not None:  # offsets come from JetStream
                    epoch = await self.epoch(stream)
                    handle = await self._backbone.subscribe_stream(
                        subject, stream, lambda d: deliver(channel, subject, d)
                    )
                else:
                    handle = await self._backbone.subscribe(
                        subject, lambda d: deliver(channel, subject, d), confirm=confirm
                    )
                topic = self._topics[subject] = _Topic(channel, handle, epoch)
            topic.members.add(member)

    async def _leave(self, subject: str, member: Member) -> None:
        async with self._lock:
            topic = self._topics.get(subject)
            if topic is None:
                return
            topic.members.discard(member)
            if not topic.members:
                del self._topics[subject]
                await topic.handle.unsubscribe()

    def notify_gap(self, since_ms: int, until_ms: int) -> None:
        """Tell every member that messages between the two times may be lost.

        Called after the backbone reconnects: core NATS does not replay what was
        published while this edge was cut off (DESIGN: gaps are always reported).
        """
        for topic in self._topics.values():
            frame = protocol.frame(
                "gap", {"channel": topic.channel, "since_ts": since_ms, "until_ts": until_ms}
            ).encode()
            for member in tuple(topic.members):
                member.deliver(frame)

    def _forward(self, channel: str, subject: str, delivery: Delivery) -> None:
        """Hand an already-encoded server frame to every member as it is."""
        topic = self._topics.get(subject)
        if topic is None:
            return
        try:
            protocol.loads(delivery.data)  # only well-formed frames reach clients
        except (ValueError, RecursionError):
            log.warning("dropped a malformed presence frame", extra={"subject": subject})
            return
        for member in tuple(topic.members):
            member.deliver(delivery.data)

    def _deliver(self, channel: str, subject: str, delivery: Delivery) -> None:
        topic = self._topics.get(subject)
        if topic is None or not topic.members:
            return
        span = tracing.start_delivery(delivery.subject, delivery.headers, self._pod)
        try:
            data = decode_data(delivery.data)
        except UnicodeDecodeError:
            self.dropped_undecodable += 1
            log.warning("dropped a non-UTF-8 message", extra={"subject": delivery.subject})
            if span is not None:
                span.set_attribute("sb.error", "not utf-8")
                span.end()
            return
        if delivery.offset is None:
            frame = self.encode_event(channel, data, delivery.headers).encode()  # once per edge
            for member in tuple(topic.members):
                member.deliver(frame)
        else:
            topic.last_offset = delivery.offset
            frame = self.stored_event(channel, data, delivery, topic.epoch)
            for member in tuple(topic.members):
                member.deliver_stored(channel, delivery.offset, frame)
        self.delivered += len(topic.members)
        if span is not None:
            span.set_attribute("sb.recipients", len(topic.members))
            span.end()

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
        headers = headers or {}
        try:
            ts = int(headers.get(HEADER_TS, ""))
        except ValueError:
            ts = int(time.time() * 1000)
        sender = headers.get(HEADER_FROM) if self._expose_publisher else None
        return protocol.event_frame(channel, data, ts=ts, sender=sender, extra=extra)
