"""Small interfaces between the hub, the backbone (NATS) and the transport."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

# the backbone's failures, as the contract names them
from switchboard.contract.errors import NoResponders as NoResponders
from switchboard.contract.errors import RequestTimeout as RequestTimeout
from switchboard.contract.errors import Unavailable as Unavailable


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message arriving from the backbone."""

    subject: str
    data: bytes
    headers: Mapping[str, str] | None
    reply: str | None = None
    offset: int | None = None  # stream sequence, for channels with history


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    headers: Mapping[str, str] | None


class SubscriptionHandle(Protocol):
    async def unsubscribe(self) -> None: ...


class Interest(Protocol):
    """A core subscription made without waiting (`Bus.subscribe_now`)."""

    def drop(self) -> None:
        """Unsubscribe without waiting: the interest ends with the backbone's next flush."""


class StreamCursor(Protocol):
    """A position in a history stream, read forward a batch at a time."""

    async def fetch(self, max_msgs: int, wait_s: float) -> list[Delivery]:
        """The next messages: at most `max_msgs`, waiting at most `wait_s` for the first."""
        ...

    async def close(self) -> None: ...


class Bus(Protocol):
    """Core NATS: subjects, publishes and requests (no storage)."""

    @property
    def connected(self) -> bool: ...

    async def subscribe(
        self, subject: str, handler: Callable[[Delivery], None], *, confirm: bool = True
    ) -> SubscriptionHandle:
        """Subscribe; with `confirm`, return only once the server has the interest."""
        ...

    def subscribe_now(self, subject: str, handler: Callable[[Delivery], None]) -> Interest:
        """Subscribe at once, unconfirmed: the interest reaches the server with the
        backbone's next flush (a handshake's personal subject: nothing waits on it)."""
        ...

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None: ...

    async def request(
        self, subject: str, data: bytes, headers: dict[str, str], timeout_s: float
    ) -> Reply: ...


class History(Protocol):
    """The channels' history streams (JetStream)."""

    async def stream_publish(
        self, subject: str, data: bytes, headers: dict[str, str], stream: str
    ) -> int:
        """Publish into a history stream; the message's offset (the original's if a dup)."""
        ...

    async def stream_epoch(self, stream: str) -> str:
        """Changes whenever the stream's history was lost (recreated)."""
        ...

    async def stream_last_offset(self, stream: str, subject: str) -> int:
        """Offset of the newest message on `subject`, 0 if none."""
        ...

    async def stream_first_offset(self, stream: str) -> int:
        """The oldest offset still stored in the stream (older ones are gone)."""
        ...

    async def open_cursor(self, stream: str, subject: str, start: int) -> StreamCursor:
        """Stored messages of `subject` from offset `start` on, read in batches."""
        ...

    async def subscribe_stream(
        self, subject: str, stream: str, handler: Callable[[Delivery], None], *, start: int
    ) -> SubscriptionHandle:
        """Messages of `subject` in `stream` from offset `start` on, with their offsets."""
        ...


class Stores(Protocol):
    """The key-value state edges share: tickets, edge stats, presence, channel configs."""

    async def put_ticket(self, ticket: str, value: bytes) -> None: ...

    async def take_ticket(self, ticket: str) -> bytes | None:
        """The ticket's value exactly once across all edges; None if unknown or used."""
        ...

    async def put_edge_stats(self, pod: str, value: bytes) -> None: ...

    async def presence_put(self, key: str) -> None: ...

    async def presence_delete(self, key: str) -> None: ...

    async def presence_keys(self, pattern: str) -> list[str]: ...

    async def watch_channels(
        self, on_change: Callable[[str, bytes | None], None], on_complete: Callable[[], None]
    ) -> None:
        """Every channel config, then each change (None: deleted); runs until cancelled.
        `on_complete` once the configs stored when the watch began have all been given."""
        ...

    async def put_revocation(self, key: str, value: bytes) -> None: ...

    async def watch_revocations(
        self, on_change: Callable[[str, bytes | None], None], on_complete: Callable[[], None]
    ) -> None:
        """Every revocation, then each new one, as `watch_channels` does for configs."""
        ...


class Backbone(Bus, History, Stores, Protocol):
    """Everything the edge needs from the message backbone: NATS in production
    (`edge.backbone`), memory in the in-process tests (`edge.memory`)."""


class Member(Protocol):
    """A local connection as the hub sees it: something to hand frames to."""

    def deliver(self, frame: bytes) -> None:
        """Queue one encoded server frame (UTF-8 JSON); shared, never modified."""
        ...

    def deliver_stored(self, channel: str, offset: int, frame: bytes) -> None:
        """An event of a channel with history (the member may hold it while recovering)."""
        ...

    def disconnect(self, code: int, reason: str) -> None:
        """A backend closes this user's connections (`Sb-Disconnect` on the user's subject)."""
        ...
