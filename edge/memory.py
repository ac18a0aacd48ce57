"""The Backbone port in memory: NATS subjects, history streams and the KV stores
of one process, for the in-process tests of hub, node and control.

It keeps the semantics the edge relies on — wildcard subjects, one reply per
request and no responders, offsets per stream with duplicates by `Nats-Msg-Id`,
a new epoch when a stream is recreated, tickets taken once, a channel watch that
starts with every entry — and nothing else (no clustering, no timing). The
integration tests run the same edge against a real nats-server.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.ports import (
    Delivery,
    Interest,
    NoResponders,
    Reply,
    RequestTimeout,
    SubscriptionHandle,
    Unavailable,
)
from switchboard.contract.permissions import subject_matches


@dataclass
class _Sub:
    pattern: str
    handler: Callable[[Delivery], None]
    start: int = 0  # stream subscriptions: the first offset handed over
    stream: str | None = None
    queue: list[Delivery] = field(default_factory=list)  # stream subscriptions: not yet sent

    def push(self, delivery: Delivery) -> None:
        """Stream messages arrive later, in order, as from a push consumer."""
        if not self.queue:
            asyncio.get_running_loop().call_soon(self._send)
        self.queue.append(delivery)

    def _send(self) -> None:
        queue, self.queue = self.queue, []
        for delivery in queue:
            self.handler(delivery)


class _Handle:
    def __init__(self, subs: list[_Sub], sub: _Sub) -> None:
        self._subs, self._sub = subs, sub

    async def unsubscribe(self) -> None:
        self.drop()

    def drop(self) -> None:
        if self._sub in self._subs:
            self._subs.remove(self._sub)


@dataclass
class _Stream:
    subjects: list[str]
    epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    messages: list[Delivery] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)  # Nats-Msg-Id -> offset
    grew: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0  # offsets 1..dropped are gone (limits)

    @property
    def last(self) -> int:
        return (self.messages[-1].offset or 0) if self.messages else self.dropped


class _Cursor:
    def __init__(self, stream: _Stream, subject: str, start: int) -> None:
        self._stream, self._subject, self._next = stream, subject, start

    async def fetch(self, max_msgs: int, wait_s: float) -> list[Delivery]:
        found = self._take(max_msgs)
        if not found:
            self._stream.grew.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._stream.grew.wait()
            except TimeoutError:
                return []
            found = self._take(max_msgs)
        return found

    def _take(self, max_msgs: int) -> list[Delivery]:
        out = [
            m
            for m in self._stream.messages
            if (m.offset or 0) >= self._next and subject_matches(self._subject, m.subject)
        ][:max_msgs]
        if out:
            self._next = (out[-1].offset or 0) + 1
        return out

    async def close(self) -> None:
        pass


class MemoryBackbone:
    """A Backbone in one process. `set_connected(False)` makes every call answer
    `Unavailable` and tells `on_state_change`, as a lost NATS connection does."""

    def __init__(self) -> None:
        self.on_state_change: Callable[[bool], None] | None = None
        self._connected = True
        self._subs: list[_Sub] = []
        self._streams: dict[str, _Stream] = {}
        self._inbox = itertools.count(1)
        self.tickets: dict[str, bytes] = {}
        self.edge_stats: dict[str, bytes] = {}
        self.presence: set[str] = set()
        self.channels: dict[str, bytes] = {}
        self.revocations: dict[str, bytes] = {}
        self._watchers: dict[str, list[Callable[[str, bytes | None], None]]] = {
            "channels": [],
            "revocations": [],
        }

    # -- test controls ---------------------------------------------------------

    def set_connected(self, connected: bool) -> None:
        self._connected = connected
        if self.on_state_change is not None:
            self.on_state_change(connected)

    def add_stream(self, name: str, subjects: list[str]) -> None:
        """Create (or recreate, with a new epoch and no history) a stream."""
        self._streams[name] = _Stream(subjects)

    def put_channel(self, name: str, value: bytes | None) -> None:
        if value is None:
            self.channels.pop(name, None)
        else:
            self.channels[name] = value
        for watcher in tuple(self._watchers["channels"]):
            watcher(name, value)

    def interest(self, subject: str) -> int:
        """How many subscriptions (core and stream) cover `subject` now."""
        return sum(subject_matches(s.pattern, subject) for s in self._subs)

    # -- Bus ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def _up(self) -> None:
        if not self._connected:
            raise Unavailable("backbone disconnected")

    async def subscribe(
        self, subject: str, handler: Callable[[Delivery], None], *, confirm: bool = True
    ) -> SubscriptionHandle:
        self._up()
        sub = _Sub(subject, handler)
        self._subs.append(sub)
        return _Handle(self._subs, sub)

    def subscribe_now(self, subject: str, handler: Callable[[Delivery], None]) -> Interest:
        sub = _Sub(subject, handler)
        self._subs.append(sub)
        return _Handle(self._subs, sub)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self._up()
        stream = next((s for s in self._streams.values() if self._captures(s, subject)), None)
        if stream is not None:  # a stream captures core publishes on its subjects too
            self._store(stream, subject, data, headers)
        else:
            self._fan_out(Delivery(subject, data, headers or None))

    def _fan_out(self, delivery: Delivery, reply: str | None = None) -> None:
        for sub in tuple(self._subs):
            if sub.stream is None and subject_matches(sub.pattern, delivery.subject):
                sub.handler(Delivery(delivery.subject, delivery.data, delivery.headers, reply))

    async def request(
        self, subject: str, data: bytes, headers: dict[str, str], timeout_s: float
    ) -> Reply:
        self._up()
        if not any(s.stream is None and subject_matches(s.pattern, subject) for s in self._subs):
            raise NoResponders(subject)
        inbox = f"_INBOX.memory.{next(self._inbox)}"
        answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def on_reply(delivery: Delivery) -> None:
            if not answer.done():
                answer.set_result(Reply(delivery.data, delivery.headers))

        handle = await self.subscribe(inbox, on_reply)
        try:
            self._fan_out(Delivery(subject, data, headers or None), reply=inbox)
            async with asyncio.timeout(timeout_s):
                return await answer
        except TimeoutError:
            raise RequestTimeout(subject) from None
        finally:
            await handle.unsubscribe()

    # -- History ----------------------------------------------------------------

    @staticmethod
    def _captures(stream: _Stream, subject: str) -> bool:
        return any(subject_matches(p, subject) for p in stream.subjects)

    def _stream(self, name: str) -> _Stream:
        self._up()
        try:
            return self._streams[name]
        except KeyError:
            raise Unavailable(f"no stream {name}") from None

    def _store(self, stream: _Stream, subject: str, data: bytes, headers: dict[str, str]) -> int:
        offset = stream.last + 1
        delivery = Delivery(subject, data, headers or None, None, offset)
        stream.messages.append(delivery)
        stream.grew.set()
        self._fan_out(delivery)
        for sub in tuple(self._subs):
            ours = sub.stream is not None and self._streams.get(sub.stream) is stream
            if ours and subject_matches(sub.pattern, subject) and offset >= sub.start:
                sub.push(delivery)
        return offset

    async def stream_publish(
        self, subject: str, data: bytes, headers: dict[str, str], stream: str
    ) -> int:
        target = self._stream(stream)
        msg_id = headers.get("Nats-Msg-Id")
        if msg_id is not None and msg_id in target.ids:
            return target.ids[msg_id]
        offset = self._store(target, subject, data, headers)
        if msg_id is not None:
            target.ids[msg_id] = offset
        return offset

    def trim(self, stream: str, keep: int) -> None:
        """Forget all but the newest `keep` messages (as the stream's limits would)."""
        target = self._streams[stream]
        gone, target.messages = target.messages[:-keep], target.messages[-keep:]
        if gone:
            target.dropped = gone[-1].offset or 0

    async def stream_epoch(self, stream: str) -> str:
        return self._stream(stream).epoch

    async def stream_last_offset(self, stream: str, subject: str) -> int:
        offsets = [m.offset or 0 for m in self._stream(stream).messages if m.subject == subject]
        return max(offsets, default=0)

    async def stream_first_offset(self, stream: str) -> int:
        target = self._stream(stream)
        return (target.messages[0].offset or 0) if target.messages else target.last + 1

    async def open_cursor(self, stream: str, subject: str, start: int) -> _Cursor:
        return _Cursor(self._stream(stream), subject, start)

    async def subscribe_stream(
        self, subject: str, stream: str, handler: Callable[[Delivery], None], *, start: int
    ) -> SubscriptionHandle:
        target = self._stream(stream)
        sub = _Sub(subject, handler, start, stream)
        self._subs.append(sub)
        stored = [
            m
            for m in target.messages
            if (m.offset or 0) >= start and subject_matches(subject, m.subject)
        ]
        for delivery in stored:  # what is stored already, as a push consumer would send it
            sub.push(delivery)
        return _Handle(self._subs, sub)

    # -- Stores -----------------------------------------------------------------

    async def put_ticket(self, ticket: str, value: bytes) -> None:
        self._up()
        self.tickets[ticket] = value

    async def take_ticket(self, ticket: str) -> bytes | None:
        self._up()
        return self.tickets.pop(ticket, None)

    async def put_edge_stats(self, pod: str, value: bytes) -> None:
        self._up()
        self.edge_stats[pod] = value

    async def presence_put(self, key: str) -> None:
        self._up()
        self.presence.add(key)

    async def presence_delete(self, key: str) -> None:
        self._up()
        self.presence.discard(key)

    async def presence_keys(self, pattern: str) -> list[str]:
        self._up()
        return sorted(k for k in self.presence if subject_matches(pattern, k))

    async def watch_channels(
        self, on_change: Callable[[str, bytes | None], None], on_complete: Callable[[], None]
    ) -> None:
        await self._watch("channels", self.channels, on_change, on_complete)

    async def put_revocation(self, key: str, value: bytes) -> None:
        self._up()
        self.revocations[key] = value
        for watcher in tuple(self._watchers["revocations"]):
            watcher(key, value)

    async def watch_revocations(
        self, on_change: Callable[[str, bytes | None], None], on_complete: Callable[[], None]
    ) -> None:
        await self._watch("revocations", self.revocations, on_change, on_complete)

    async def _watch(
        self,
        kind: str,
        entries: dict[str, bytes],
        on_change: Callable[[str, bytes | None], None],
        on_complete: Callable[[], None],
    ) -> None:
        for name, value in tuple(entries.items()):
            on_change(name, value)
        on_complete()
        self._watchers[kind].append(on_change)
        try:
            await asyncio.Event().wait()  # runs until cancelled, like the NATS watch
        finally:
            self._watchers[kind].remove(on_change)
