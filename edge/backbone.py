"""The NATS backbone: the only edge module that imports `nats`.

Reconnects forever (nats-py gives up after 60 attempts by default) and maps
NATS failures onto the small exceptions of edge.ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from edge.ports import Delivery, NoResponders, Reply, RequestTimeout, Unavailable
from switchboard import jetstream
from switchboard.contract.names import (
    CHANNELS_BUCKET,
    EDGES_BUCKET,
    PRESENCE_BUCKET,
    TICKETS_BUCKET,
)
from switchboard.contract.natsauth import redact
from switchboard.contract.settings import ReplicasSetting

log = logging.getLogger("switchboard.edge.backbone")

# JetStream's "wrong last sequence" API errors: a conditional write lost a race.
WRONG_LAST_SEQUENCE = (10071, 10164)
STREAM_HEARTBEAT_S = 1.0  # a history consumer lost with its server is noticed in ~2 s
CURSOR_IDLE_S = 30.0  # the server drops a replay consumer nobody read for this long


class _Handle:
    __slots__ = ("_sub",)

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def unsubscribe(self) -> None:
        with contextlib.suppress(ConnectionClosedError, nats.errors.BadSubscriptionError):
            await self._sub.unsubscribe()


class _Cursor:
    __slots__ = ("_backbone", "_sub")

    def __init__(self, backbone: NatsBackbone, sub: JetStreamContext.PullSubscription) -> None:
        self._backbone = backbone
        self._sub = sub

    async def fetch(self, max_msgs: int, wait_s: float) -> list[Delivery]:
        """Up to `max_msgs` next messages, waiting at most `wait_s` for the first."""
        with self._backbone._store("history replay"):
            try:
                msgs = await self._sub.fetch(max_msgs, timeout=wait_s)
            except NatsTimeout:
                return []
        return [
            Delivery(m.subject, m.data, m.headers, None, m.metadata.sequence.stream) for m in msgs
        ]

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._sub.unsubscribe()


class NatsBackbone:
    """nats-py client configured for an edge."""

    def __init__(
        self,
        servers: str,
        name: str,
        *,
        ticket_ttl_s: int,
        stats_ttl_s: float,
        presence_ttl_s: float,
        jetstream_replicas: ReplicasSetting = "auto",
        options: dict[str, Any] | None = None,
    ) -> None:
        self._servers = [s.strip() for s in servers.split(",") if s.strip()]
        self._name = name
        self._options = options or {}  # credentials and TLS (switchboard.contract.natsauth)
        self._replicas_setting: ReplicasSetting = jetstream_replicas
        self._ticket_ttl_s = ticket_ttl_s
        self._nc: Client | None = None
        self._stats_ttl_s = stats_ttl_s
        self._presence_ttl_s = presence_ttl_s
        self._buckets: dict[str, KeyValue] = {}
        self.on_state_change: Callable[[bool], None] = lambda connected: None

    async def connect(self) -> None:
        self._nc = await nats.connect(
            servers=self._servers,
            name=self._name,
            max_reconnect_attempts=-1,  # forever: an edge never gives up on its backbone
            reconnect_time_wait=0.5,
            connect_timeout=2,
            allow_reconnect=True,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
            **self._options,
        )
        log.info("nats connected", extra={"servers": [redact(s) for s in self._servers]})

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until everything sent so far has been processed by the server.

        nats-py writes its PING ahead of commands still in its pending buffer,
        so one `flush()` can return before a just-buffered SUB or PUB reached
        the server; the second PING goes out behind them.
        """
        if self._nc is not None and self._nc.is_connected:
            for _ in range(2):
                await self._nc.flush(timeout=max(1, round(timeout_s)))

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def client(self) -> Client:
        if self._nc is None:
            raise Unavailable("not connected")
        return self._nc

    async def _disconnected(self) -> None:
        log.warning("nats disconnected")
        self.on_state_change(False)

    async def _reconnected(self) -> None:
        log.info("nats reconnected")
        self.on_state_change(True)

    async def _error(self, exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def subscribe(
        self, subject: str, handler: Callable[[Delivery], None], *, confirm: bool = True
    ) -> _Handle:
        async def on_msg(msg: Msg) -> None:
            handler(Delivery(msg.subject, msg.data, msg.headers, msg.reply or None))

        # pending limits are generous: the hub hands messages to bounded outboxes at once.
        sub = await self.client.subscribe(
            subject, cb=on_msg, pending_msgs_limit=1_000_000, pending_bytes_limit=256 << 20
        )
        # Round trip so the server has the interest before the client hears "subscribed":
        # a publish the client triggers right after its ack must reach it.
        if confirm and self.connected:
            try:
                await self.flush(timeout_s=2)
            except (NatsTimeout, ConnectionClosedError):
                log.warning("subscription to %s not confirmed yet", subject)
        return _Handle(sub)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        if not self.connected:
            raise Unavailable("backbone disconnected")
        try:
            await self.client.publish(subject, data, headers=headers or None)
        except (ConnectionClosedError, OutboundBufferLimitError) as exc:
            raise Unavailable(str(exc) or "backbone unavailable") from None

    async def request(
        self, subject: str, data: bytes, headers: dict[str, str], timeout_s: float
    ) -> Reply:
        if not self.connected:
            raise Unavailable("backbone disconnected")
        try:
            msg = await self.client.request(subject, data, timeout=timeout_s, headers=headers)
        except NoRespondersError:
            raise NoResponders(subject) from None
        except NatsTimeout:
            raise RequestTimeout(subject) from None
        except ConnectionClosedError:
            raise Unavailable("backbone closed") from None
        return Reply(msg.data, msg.headers)

    @contextlib.contextmanager
    def _store(self, what: str) -> Iterator[None]:
        """Around a JetStream/KV call: any NATS failure becomes Unavailable naming `what`."""
        if not self.connected:
            raise Unavailable("backbone disconnected")
        try:
            yield
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"{what}: {exc!r}") from None

    async def _bucket(self, name: str, ttl_s: float) -> KeyValue:
        """A KV bucket, created with `ttl_s` if it does not exist yet; created (or
        raised) to the replica count of `SB_EDGE_JETSTREAM_REPLICAS` on first use.
        `sb_channels` only read here: its writer (operator, CLI) raises it."""
        if name not in self._buckets:
            replicas = jetstream.replicas_for(self.client, self._replicas_setting)
            self._buckets[name] = await jetstream.ensure_bucket(
                self.client, name, ttl_s, replicas, owner=name != CHANNELS_BUCKET
            )
        return self._buckets[name]

    async def _ticket_bucket(self) -> KeyValue:
        return await self._bucket(TICKETS_BUCKET, self._ticket_ttl_s)

    async def put_edge_stats(self, pod: str, value: bytes) -> None:
        """Live stats in `sb_edges` for the operator; entries expire with the TTL."""
        with self._store("stats store"):
            await (await self._bucket(EDGES_BUCKET, self._stats_ttl_s)).put(pod, value)

    async def stream_publish(
        self, subject: str, data: bytes, headers: dict[str, str], stream: str
    ) -> int:
        with self._store("history store"):
            ack = await self.client.jetstream().publish(
                subject, data, headers=headers or None, stream=stream, timeout=5
            )
        return int(ack.seq)

    async def _stream_info(self, stream: str) -> StreamInfo:
        with self._store("history store"):
            return await self.client.jetstream().stream_info(stream)

    async def stream_epoch(self, stream: str) -> str:
        info = await self._stream_info(stream)  # the creation time: new when recreated
        return str(info.created.isoformat() if info.created else info.config.name)

    async def stream_last_offset(self, stream: str, subject: str) -> int:
        with self._store("history store"):
            try:
                msg = await self.client.jetstream().get_last_msg(stream, subject)
            except NotFoundError:
                return 0  # nothing stored on this subject yet
        return int(msg.seq or 0)

    async def stream_first_offset(self, stream: str) -> int:
        return int((await self._stream_info(stream)).state.first_seq)

    async def open_cursor(self, stream: str, subject: str, start: int) -> _Cursor:
        """Read `subject`'s stored messages from offset `start` on, a batch at a time.

        A pull consumer, not a push one: the edge asks for the next batch only once
        the client has taken the last, so a backlog of any size costs one batch of
        memory. Ephemeral, in memory, and reaped by the server if this edge dies.
        """
        with self._store("history replay"):
            sub = await self.client.jetstream().pull_subscribe(
                subject,
                durable=None,
                stream=stream,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start,
                    ack_policy=AckPolicy.NONE,
                    inactive_threshold=CURSOR_IDLE_S,
                    mem_storage=True,
                    num_replicas=1,
                ),
            )
        return _Cursor(self, sub)

    async def subscribe_stream(
        self, subject: str, stream: str, handler: Callable[[Delivery], None], *, start: int
    ) -> _Handle:
        async def on_msg(msg: Msg) -> None:
            offset = msg.metadata.sequence.stream
            handler(Delivery(msg.subject, msg.data, msg.headers, None, offset))

        with self._store("history store"):
            sub = await self.client.jetstream().subscribe(
                subject,
                stream=stream,
                cb=on_msg,
                ordered_consumer=True,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start,
                    # the consumer lives on one server: if it dies, nats-py notices after
                    # two missed heartbeats and recreates the consumer from its position
                    idle_heartbeat=STREAM_HEARTBEAT_S,
                ),
            )
        return _Handle(sub)

    async def presence_put(self, key: str) -> None:
        await self._presence_op(lambda kv: kv.put(key, b"1"))

    async def presence_delete(self, key: str) -> None:
        await self._presence_op(lambda kv: kv.delete(key))

    async def presence_keys(self, pattern: str) -> list[str]:
        """Keys of `sb_presence` matching a subject-style pattern (`chat.*.*`)."""
        keys: list[str] = []

        async def read(kv: KeyValue) -> None:
            # kv.keys() would scan the whole bucket and match its filters as substrings;
            # a watch on the pattern lets the server select the keys.
            watcher = await kv.watch(pattern, ignore_deletes=True, meta_only=True)
            try:
                async for entry in watcher:
                    if entry is None:  # everything current has been delivered
                        break
                    keys.append(entry.key)
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]

        await self._presence_op(read)
        return keys

    async def _presence_op(self, op: Callable[[KeyValue], Awaitable[object]]) -> None:
        with self._store("presence store"):
            await op(await self._bucket(PRESENCE_BUCKET, self._presence_ttl_s))

    async def watch_channels(self, on_change: Callable[[str, bytes | None], None]) -> None:
        """Feed every `sb_channels` entry, then each change, to `on_change` (None: deleted).

        Runs until cancelled; a broken watch (e.g. NATS restarted without its
        store) starts over from the current entries.
        """
        while True:
            try:
                kv = await self._bucket(CHANNELS_BUCKET, 0)
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        continue  # "all current entries delivered"
                    deleted = entry.operation in ("DEL", "PURGE")
                    on_change(entry.key, None if deleted else entry.value)
            except (nats.errors.Error, TimeoutError, Unavailable) as exc:
                log.warning("channel config watch restarting: %s", exc)
                self._buckets.pop(CHANNELS_BUCKET, None)
                await asyncio.sleep(1)

    async def put_ticket(self, ticket: str, value: bytes) -> None:
        with self._store("ticket store"):
            await (await self._ticket_bucket()).create(ticket, value)

    async def take_ticket(self, ticket: str) -> bytes | None:
        with self._store("ticket store"):
            try:
                kv = await self._ticket_bucket()
                entry = await kv.get(ticket)
                # Delete only if nobody else did since we read it: single use across edges.
                await kv.delete(ticket, last=entry.revision)
            except (KeyNotFoundError, KeyWrongLastSequenceError):
                return None  # unknown, expired, or redeemed by someone else
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code in WRONG_LAST_SEQUENCE:  # kv.delete does not map it itself
                    return None  # another redemption deleted it first
                raise
        return entry.value
