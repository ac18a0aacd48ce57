"""One client's recovery of stored events: replays from a JetStream cursor with
backpressure, and the hand-over to the live feed without a gap or a repeat.

While a channel is being replayed its live events are left to the replay, which
reads them from the stream in their turn; once the replay has reached what the
live feed handed out it stops, and live events up to its last offset are repeats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from edge.hub import Hub, decode_data
from edge.ports import Delivery, History, Unavailable
from switchboard.contract.channels import channel_subject
from switchboard.contract.codes import CloseCode

REPLAY_BATCH_BYTES = 256 * 1024  # read from the stream per batch, at the largest message size
REPLAY_BATCH_MAX = 256  # messages per batch
REPLAY_WAIT_S = 1.0  # for a batch the stream does not have yet
REPLAY_EMPTY_TRIES = 3  # empty batches, while behind the live feed, before giving up


class Sink(Protocol):
    """What a replay needs from the client's socket adapter."""

    @property
    def closing(self) -> bool: ...

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]: ...

    def deliver(self, frame: bytes) -> None: ...

    def room_for(self, size: int) -> Awaitable[None]:
        """Wait until the client has taken enough of its outbox for `size` more bytes."""
        ...

    def abandon(self, code: int, reason: str) -> None:
        """Close without flushing (in the background)."""
        ...


class Recovery:
    """Replays for one client, one at a time (one batch of memory per client)."""

    __slots__ = ("_floors", "_history", "_hub", "_lock", "_prefix", "_recovering", "_replays")

    def __init__(self, hub: Hub, history: History, prefix: str) -> None:
        self._hub = hub
        self._history = history
        self._prefix = prefix
        # channel -> last offset replayed so far, while its history is replayed
        self._recovering: dict[str, int] | None = None
        # channel -> last offset replayed: live events up to it are repeats (dropped)
        self._floors: dict[str, int] | None = None
        self._replays: dict[str, asyncio.Task[None]] | None = None
        self._lock: asyncio.Lock | None = None

    def begin(self, channel: str, since_offset: int) -> None:
        """From now on, live events of `channel` are left to the replay."""
        self._recovering = self._recovering or {}
        self._recovering[channel] = since_offset

    def takes_live(self, channel: str, offset: int) -> bool:
        """Whether a live event at `offset` should reach the client now."""
        if self._recovering and channel in self._recovering:
            return False  # stored: the replay reads it from the stream in its turn
        floors = self._floors
        if floors and channel in floors:
            if offset <= floors[channel]:
                return False  # the replay delivered it already
            del floors[channel]  # live is past the replay: no repeat can follow
        return True

    def replayed_to(self, channel: str) -> int | None:
        """The last offset replayed, while `channel` is being replayed."""
        if self._recovering and channel in self._recovering:
            return self._recovering[channel]
        return None

    def start(
        self, channel: str, stream: str, start: int, epoch: str, size: int, sink: Sink
    ) -> None:
        """Replay from `start` in the background: the client's other requests go on."""
        assert self._recovering is not None
        self._recovering[channel] = start - 1
        if self._replays is None:
            self._replays = {}
        task = asyncio.create_task(self._replay(channel, stream, start, epoch, size, sink))
        self._replays[channel] = task
        task.add_done_callback(self._forgetter(channel))

    def _forgetter(self, channel: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(task: asyncio.Task[None]) -> None:
            """A finished replay leaves; one started later for the same channel stays."""
            if self._replays and self._replays.get(channel) is task:
                del self._replays[channel]

        return forget

    def cancel(self, channel: str) -> None:
        """The client left the channel: no replay, no floor."""
        replay = self._replays.get(channel) if self._replays else None
        if replay is not None:
            replay.cancel()
        self.stop(channel, None)
        if self._floors:
            self._floors.pop(channel, None)

    def cancel_all(self) -> None:
        for task in tuple((self._replays or {}).values()):
            task.cancel()

    def stop(self, channel: str, replayed_to: int | None) -> None:
        """Back to live: events of the channel up to `replayed_to` are repeats."""
        if self._recovering is not None:
            self._recovering.pop(channel, None)
            if not self._recovering:
                self._recovering = None
        if replayed_to is not None:
            if self._floors is None:
                self._floors = {}
            self._floors[channel] = replayed_to

    async def _replay(
        self, channel: str, stream: str, start: int, epoch: str, size: int, sink: Sink
    ) -> None:
        """Stored events from `start` until the replay meets the live feed.

        A batch is read only once the client has taken most of the last one
        (`room_for`), so any backlog costs one batch of memory and no deadline
        applies while the client reads; a client that stops reading is evicted
        by the outbox's usual rule. The switch to live happens without an await,
        once the replay has reached what the feed handed out.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        subject = channel_subject(self._prefix, channel)
        batch = max(1, min(REPLAY_BATCH_MAX, REPLAY_BATCH_BYTES // size))
        async with self._lock:
            cursor = None
            try:
                cursor = await self._history.open_cursor(stream, subject, start)
                empty = 0
                while not sink.closing:
                    done = self._recovering[channel] if self._recovering else start - 1
                    if done >= (self._hub.delivered_offset(channel) or 0):
                        break  # caught up with the live feed
                    deliveries = await cursor.fetch(batch, REPLAY_WAIT_S)
                    empty = 0 if deliveries else empty + 1
                    if empty >= REPLAY_EMPTY_TRIES:
                        # The feed handed out events the stream does not give back (a
                        # JetStream too slow to answer, or the stream replaced): going
                        # live now would skip them. The client resumes from what it has.
                        raise Unavailable("the stream gave nothing the live feed had")
                    for delivery in deliveries:
                        await self._replay_one(channel, delivery, epoch, sink)
            except Unavailable as exc:
                # the client has all events up to its last offset: it resumes from there
                sink.log.warning("replay of %s interrupted: %s", channel, exc)
                self.stop(channel, None)
                sink.abandon(CloseCode.TRY_AGAIN_LATER, "recovery interrupted")
                return
            finally:
                if cursor is not None:
                    await cursor.close()
            if self._recovering and channel in self._recovering:
                self.stop(channel, self._recovering[channel])

    async def _replay_one(self, channel: str, delivery: Delivery, epoch: str, sink: Sink) -> None:
        recovering = self._recovering
        if not recovering or channel not in recovering or delivery.offset is None:
            return
        if delivery.offset <= recovering[channel]:
            return
        hub = self._hub
        try:
            frame = hub.stored_event(channel, decode_data(delivery.data), delivery, epoch)
        except (ValueError, RecursionError):  # not sent live either: counted there and here
            hub.dropped += 1
            sink.log.warning("replay skipped an undeliverable message at %s", delivery.offset)
        else:
            await sink.room_for(len(frame))
            if sink.closing or channel not in recovering:
                return
            sink.deliver(frame)
        recovering[channel] = delivery.offset
