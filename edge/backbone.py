"""The NATS backbone: the only edge module that imports `nats`.

Reconnects forever (nats-py gives up after 60 attempts by default) and maps
NATS failures onto the small exceptions of edge.ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.client import JetStreamContext
from nats.js.errors import (
    APIError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from nats.nuid import NUID

from edge.ports import Delivery, NoResponders, Reply, RequestTimeout, Unavailable
from switchboard import jetstream
from switchboard.contract.names import (
    CHANNELS_BUCKET,
    EDGES_BUCKET,
    PRESENCE_BUCKET,
    REVOKED_BUCKET,
    TICKETS_BUCKET,
    kv_stream,
)
from switchboard.contract.natsauth import redact
from switchboard.contract.settings import ReplicasSetting

log = logging.getLogger("switchboard.edge.backbone")

T = TypeVar("T")

# JetStream's "wrong last sequence" API errors: a conditional write lost a race.
WRONG_LAST_SEQUENCE = (10071, 10164)
CURSOR_IDLE_S = 30.0  # the server drops a replay consumer nobody read for this long

# JetStream API reads and consumer creation. A request that reaches a stream while it
# elects a leader is dropped, not answered (and nats-py waits 5 s for it): it is asked
# again this often, each ask waiting API_WAIT_S, and the first answer wins.
API_RETRY_S = 0.25
API_WAIT_S = 2.0
API_BUDGET_S = 5.0  # then the call fails: Unavailable

# A followed stream (live history, channel config) is read through a push consumer
# that lives on one server. Its heartbeats stop when that server dies: after
# FOLLOW_IDLE_S of silence the edge rebuilds it from the last offset it handed on.
STREAM_HEARTBEAT_S = 1.0
FOLLOW_IDLE_S = 2 * STREAM_HEARTBEAT_S
FOLLOW_CHECK_S = 0.25  # how often followers are checked for silence
FOLLOW_ORPHAN_S = 5.0  # the server drops a consumer nobody listens to after this long
REBUILD_BUDGET_S = 20.0  # a rebuild asks on this long (Raft elections: 4-9 s, or twice)
REBUILD_ASK_S = 0.1  # and this often: one follower per stream asks (see _in_turn)
UNANSWERED = (NatsTimeout, TimeoutError, NoRespondersError, ServiceUnavailableError)
# SUB and UNSUB of personal subjects (`subscribe_now`) are written together once per
# window: a write to NATS costs the edge a system call, and an unconfirmed interest
# 5 ms later changes nothing a client can tell.
COMMAND_WINDOW_S = 0.005


class _Handle:
    __slots__ = ("_sub",)

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def unsubscribe(self) -> None:
        with contextlib.suppress(ConnectionClosedError, nats.errors.BadSubscriptionError):
            await self._sub.unsubscribe()


class _Interest:
    """A core subscription made and dropped without awaiting anything
    (`NatsBackbone.subscribe_now`): its SUB and UNSUB join nats-py's pending
    commands and leave with the backbone's next flush."""

    __slots__ = ("_backbone", "_sub")

    def __init__(self, backbone: NatsBackbone, sub: _DirectSubscription) -> None:
        self._backbone = backbone
        self._sub = sub

    def drop(self) -> None:
        sub = self._sub
        nc = sub._conn
        if sub._closed or nc.is_closed:
            return
        sub._closed = True
        nc._remove_sub(sub._id)
        # Also while reconnecting (nats-py would not): its SUB may still be among the
        # pending commands nats-py writes once reconnected; the UNSUB follows it. (A
        # server that never saw the SUB ignores the UNSUB.)
        self._backbone._command(f"UNSUB {sub._id}\r\n".encode())


# What nats-py's subscribe accepts: no whitespace (CR LF would inject protocol
# commands), no empty token, `>` only as the whole last token.
_SUBJECT = re.compile(r"(?:[^. \t\r\n>]+\.)*(?:[^. \t\r\n>]+|>)")


def _check_subject(subject: str) -> None:
    if _SUBJECT.fullmatch(subject) is None:
        raise nats.errors.BadSubjectError


class _Inline:
    """Stands in for a nats-py subscription's pending queue: `put_nowait` (called by
    nats-py's reader for each message) hands the message to the handler at once."""

    __slots__ = ("_handler",)

    def __init__(self, handler: Callable[[Delivery], None]) -> None:
        self._handler = handler

    def put_nowait(self, msg: Msg) -> None:
        try:
            self._handler(Delivery(msg.subject, msg.data, msg.headers, msg.reply or None))
        except Exception:  # never into nats-py's reader: it would drop the connection
            log.exception("handler failed", extra={"subject": msg.subject})

    def empty(self) -> bool:
        return True

    def qsize(self) -> int:
        return 0

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        pass


class _DirectSubscription(Subscription):
    """A core NATS subscription whose messages are handled inside nats-py's reader,
    with no queue and no task of its own.

    nats-py gives every subscription with a callback an `asyncio.Queue` (three deques
    and an Event) and a task reading it, ~4 KiB; an edge holds one subscription per
    connected user (`sb.user.<id>`) and per channel in use. Handlers here are plain
    functions that hand frames to outboxes, so nothing is gained by the hop through a
    queue and a task. Made and registered as `Client.subscribe` does; nats-py uses
    the attributes set here (reconnect replays `_subject`/`_queue`, drain and close
    look for the task and iterators), tests/integration/test_backbone.py holds it to
    the installed nats-py with a real nats-server.
    """

    def __init__(
        self, conn: Client, sid: int, subject: str, handler: Callable[[Delivery], None]
    ) -> None:
        # Subscription.__init__ is not called: it makes the queue and its Event.
        self._conn = conn
        self._id = sid
        self._subject = subject
        self._queue = ""
        self._max_msgs = 0
        self._received = 0
        self._cb = None
        self._future = None
        self._closed = False
        self._pending_msgs_limit = 0
        self._pending_bytes_limit = 0  # 0: nats-py's slow consumer check is off
        self._pending_queue = cast("asyncio.Queue[Msg]", _Inline(handler))
        self._pending_next_msgs_calls = None  # type: ignore[assignment]
        self._wait_for_msgs_task = None
        self._message_iterator = None
        self._jsi = None

    @property
    def _pending_size(self) -> int:
        """Bytes waiting: none (nats-py adds each message's size; nothing waits)."""
        return 0

    @_pending_size.setter
    def _pending_size(self, value: int) -> None:
        pass


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
        revocation_ttl_s: float = 86400.0,
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
        self._revocation_ttl_s = revocation_ttl_s
        self._buckets: dict[str, KeyValue] = {}
        self._followers: set[_Follower] = set()
        self._follow_checker: asyncio.Task[None] | None = None
        self._probes: dict[str, asyncio.Future[bool]] = {}  # stream -> a rebuild asking it
        self._flush_asked = False  # a flush of buffered SUB/UNSUB commands is on its way
        self._chunk: bytearray | None = None  # SUB/UNSUB commands joined, not written yet
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
        """Drain what is pending to NATS; while reconnecting there is no connection to
        drain (nats-py raises), so just close: a shutdown must never fail on it."""
        for follower in tuple(self._followers):
            await follower.stop()
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        if nc.is_connected:
            try:
                await nc.drain()
                return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("nats drain at shutdown failed: %s", exc)
        try:
            await nc.close()
        except RuntimeError as exc:  # uvloop: nats-py flushes its pending to a closed socket
            log.warning("nats close at shutdown: %s", exc)

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
        # what consumers pushed meanwhile is lost, and their servers may be gone
        for follower in tuple(self._followers):
            follower.lost("reconnected")
        self.on_state_change(True)

    async def _error(self, exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def subscribe(
        self, subject: str, handler: Callable[[Delivery], None], *, confirm: bool = True
    ) -> _Handle:
        sub = self._register(subject, handler)
        await self.client._send_subscribe(sub)  # SUB goes out with the next flush of nats-py
        # Round trip so the server has the interest before the client hears "subscribed":
        # a publish the client triggers right after its ack must reach it.
        if confirm and self.connected:
            try:
                await self.flush(timeout_s=2)
            except (NatsTimeout, ConnectionClosedError):
                log.warning("subscription to %s not confirmed yet", subject)
        return _Handle(sub)

    def subscribe_now(self, subject: str, handler: Callable[[Delivery], None]) -> _Interest:
        """Subscribe without waiting for anything: the SUB goes out with the next flush,
        unconfirmed (within `COMMAND_WINDOW_S`). What every handshake does for its user's
        subject, so it costs no task, no future and no round trip."""
        sub = self._register(subject, handler)
        self._command(f"SUB {subject}  {sub._id}\r\n".encode())  # (as nats-py writes it)
        return _Interest(self, sub)

    def _register(self, subject: str, handler: Callable[[Delivery], None]) -> _DirectSubscription:
        """A subscription known to nats-py (it subscribes again to what it knows after a
        reconnect), as `Client.subscribe` registers one; its SUB is not sent yet."""
        nc = self.client
        _check_subject(subject)
        if nc.is_closed:
            raise ConnectionClosedError
        if nc.is_draining:
            raise nats.errors.ConnectionDrainingError
        nc._sid += 1
        sub = _DirectSubscription(nc, nc._sid, subject, handler)
        nc._subs[sub._id] = sub
        return sub

    def _command(self, command: bytes) -> None:
        """Buffer a protocol command in nats-py's pending commands, as its
        `_send_command` does, but joined to the previous one if that was ours too:
        nats-py writes each pending item with its own `write` (a system call each,
        with uvloop), and a reconnect storm buffers thousands of SUBs and UNSUBs.
        One flush is asked of nats-py's flusher per `COMMAND_WINDOW_S`: a storm's
        subscriptions leave in a few writes, not two per handshake."""
        nc = self.client
        pending = cast("list[bytes | bytearray]", nc._pending)
        chunk = self._chunk
        if chunk is not None and pending and pending[-1] is chunk:
            chunk += command  # (nats-py replaces its list when it writes: never mutated after)
        else:
            self._chunk = bytearray(command)
            pending.append(self._chunk)
        nc._pending_data_size += len(command)
        if not self._flush_asked:
            self._flush_asked = True
            asyncio.get_running_loop().call_later(COMMAND_WINDOW_S, self._ask_flush)

    def _ask_flush(self) -> None:
        self._flush_asked = False
        nc = self._nc
        queue = None if nc is None else nc._flush_queue
        if nc is None or queue is None or not nc.is_connected or queue.full():
            return  # (not connected: nats-py writes its pending commands on reconnect)
        queue.put_nowait(asyncio.get_running_loop().create_future())

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

    async def _stream_info(
        self,
        stream: str,
        what: str = "history store",
        budget_s: float = API_BUDGET_S,
        every_s: float = API_RETRY_S,
    ) -> StreamInfo:
        js = self.client.jetstream(timeout=API_WAIT_S)
        with self._store(what):
            return await self._first_answer(lambda: js.stream_info(stream), what, budget_s, every_s)

    async def stream_epoch(self, stream: str) -> str:
        return _epoch(await self._stream_info(stream))

    async def stream_last_offset(self, stream: str, subject: str) -> int:
        js = self.client.jetstream(timeout=API_WAIT_S)
        with self._store("history store"):
            try:
                msg = await self._first_answer(
                    lambda: js.get_last_msg(stream, subject), "history store"
                )
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
    ) -> _Follower:
        follower = _Follower(self, stream, subject, handler, after=start - 1)
        await follower.start()
        return follower

    async def _first_answer(
        self,
        ask: Callable[[], Awaitable[T]],
        what: str,
        budget_s: float = API_BUDGET_S,
        every_s: float = API_RETRY_S,
    ) -> T:
        """The answer to an idempotent JetStream API request, asked again every
        `every_s` while unanswered, for up to `budget_s`.

        A stream (or JetStream's meta group) that is electing a leader drops requests
        without an answer; the new leader answers the next ask at once. Earlier asks
        keep waiting (API_WAIT_S), so a slow answer on a busy server still counts.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        asked: set[asyncio.Future[T]] = set()
        try:
            while True:
                if not self.connected:
                    raise Unavailable("backbone disconnected")
                asked.add(asyncio.ensure_future(ask()))
                slot_end = loop.time() + every_s
                while asked and loop.time() < slot_end:
                    done, asked = await asyncio.wait(
                        asked, timeout=slot_end - loop.time(), return_when=asyncio.FIRST_COMPLETED
                    )
                    for future in done:
                        exc = future.exception()
                        if exc is None:
                            return future.result()
                        if not isinstance(exc, UNANSWERED):
                            raise exc
                if loop.time() >= deadline:
                    raise Unavailable(f"{what}: no answer within {budget_s:g} s")
                await asyncio.sleep(max(0.0, slot_end - loop.time()))
        finally:
            for future in asked:
                future.cancel()

    async def _create_push_consumer(
        self,
        stream: str,
        config: ConsumerConfig,
        budget_s: float = API_BUDGET_S,
        every_s: float = API_RETRY_S,
    ) -> None:
        """Create a *direct* push consumer: made by the stream leader alone, without
        JetStream's meta leader, so it can be rebuilt while a lost meta leader is being
        replaced (4-9 s). Unlisted, unreplicated, in memory; it stops with its server.
        Named, so asking again (a lost answer) is answered by the same consumer."""
        request = json.dumps({"stream_name": stream, "config": config.as_dict() | {"direct": True}})

        async def ask() -> None:
            msg = await self.client.request(
                f"$JS.API.CONSUMER.CREATE.{stream}", request.encode(), timeout=API_WAIT_S
            )
            answer = json.loads(msg.data)
            if "error" in answer:
                APIError.from_error(answer["error"])  # raises

        with self._store(f"consumer on {stream}"):
            await self._first_answer(ask, f"consumer on {stream}", budget_s, every_s)

    async def _in_turn(self, stream: str, rebuild: Callable[[], Awaitable[None]]) -> None:
        """Run a follower's `rebuild` of `stream`, one follower per stream at a time
        while the stream does not answer: during an election one asks, and the others
        (every channel of a Channel shares its stream) go together once it had its
        answer, instead of all asking every REBUILD_ASK_S."""
        while (probe := self._probes.get(stream)) is not None:
            if await asyncio.shield(probe):
                await rebuild()  # the stream answers again
                return
        probe = asyncio.get_running_loop().create_future()
        self._probes[stream] = probe
        answered = False
        try:
            await rebuild()
            answered = True
        finally:
            del self._probes[stream]
            probe.set_result(answered)

    def _follow(self, follower: _Follower) -> None:
        self._followers.add(follower)
        if self._follow_checker is None or self._follow_checker.done():
            self._follow_checker = asyncio.create_task(self._check_followers())

    def _unfollow(self, follower: _Follower) -> None:
        self._followers.discard(follower)

    async def _check_followers(self) -> None:
        """Rebuild every follower whose consumer went silent (its server died)."""
        loop = asyncio.get_running_loop()
        while self._followers:
            await asyncio.sleep(FOLLOW_CHECK_S)
            if not self.connected:
                continue
            now = loop.time()
            for follower in tuple(self._followers):
                if now - follower.heard > FOLLOW_IDLE_S:
                    follower.lost(f"silent for {now - follower.heard:.1f} s")

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

    async def watch_channels(
        self, on_change: Callable[[str, bytes | None], None], on_complete: Callable[[], None]
    ) -> None:
        """Feed every `sb_channels` entry, then each change (`_watch_bucket`)."""
        await self._watch_bucket(CHANNELS_BUCKET, 0, on_change, on_complete)

    async def watch_revocations(
        self, on_change: Callable[[str, bytes | None], None], on_complete: Callable[[], None]
    ) -> None:
        """Feed every `sb_revoked` entry, then each change (`_watch_bucket`)."""
        await self._watch_bucket(REVOKED_BUCKET, self._revocation_ttl_s, on_change, on_complete)

    async def put_revocation(self, key: str, value: bytes) -> None:
        with self._store("revocation store"):
            await (await self._bucket(REVOKED_BUCKET, self._revocation_ttl_s)).put(key, value)

    async def _watch_bucket(
        self,
        bucket: str,
        ttl_s: float,
        on_change: Callable[[str, bytes | None], None],
        on_complete: Callable[[], None],
    ) -> None:
        """Feed every entry of `bucket`, then each change, to `on_change` (None: deleted
        or expired), and call `on_complete` once the entries up to the bucket's last
        sequence when the watch began are given (that message is the newest of its
        key, so it comes).

        Runs until cancelled. Read like every followed stream (not with nats-py's KV
        watch, which has no heartbeat and so never notices its server died): rebuilt
        from the last revision when its consumer is lost, and from the current entries
        when the bucket was recreated (e.g. NATS restarted without its store).
        """
        prefix = f"$KV.{bucket}."

        def entry(delivery: Delivery) -> None:
            operation = (delivery.headers or {}).get("KV-Operation")
            deleted = operation in ("DEL", "PURGE")
            on_change(delivery.subject.removeprefix(prefix), None if deleted else delivery.data)
            if upto and (delivery.offset or 0) >= upto[0]:
                upto.clear()
                on_complete()

        upto: list[int] = []  # the bucket's last sequence at the start, until it is given
        follower = _Follower(self, kv_stream(bucket), f"{prefix}>", entry, after=None, restart=True)
        try:
            while True:
                try:
                    await self._bucket(bucket, ttl_s)  # dev mode: the first user makes it
                    state = (await self._stream_info(kv_stream(bucket))).state
                    upto[:] = [state.last_seq] if state.messages else []
                    await follower.start()
                    if not state.messages:
                        on_complete()
                    break
                except (nats.errors.Error, TimeoutError, Unavailable) as exc:
                    log.warning("%s watch not started yet: %s", bucket, exc)
                    self._buckets.pop(bucket, None)
                    await asyncio.sleep(1)
            await asyncio.Event().wait()  # until cancelled
        finally:
            await follower.stop()

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


def _epoch(info: StreamInfo) -> str:
    """The stream's creation time: new whenever it was recreated (history lost)."""
    return str(info.created.isoformat() if info.created else info.config.name)


class _Follower:
    """A stream's messages on `subject` as they are stored, through a push consumer
    this edge rebuilds itself: when its server dies (heartbeats stop), when a message
    went missing (consumer sequence gap) and when the backbone reconnects, from the
    offset after the last one handed on. Repeats never reach the handler.

    `after` None starts with the newest message per subject (a KV bucket's current
    entries); with `restart`, a stream found recreated starts over that way too.
    """

    def __init__(
        self,
        backbone: NatsBackbone,
        stream: str,
        subject: str,
        handler: Callable[[Delivery], None],
        *,
        after: int | None,
        restart: bool = False,
    ) -> None:
        self._backbone = backbone
        self._stream = stream
        self._subject = subject
        self._handler = handler
        self._last = after  # newest offset handed on (None: nothing yet, start with the current)
        self._restart = restart
        self._created: str | None = None  # the stream's creation time, with `restart`
        self._sub: Subscription | None = None
        self._generation = 0  # of the current consumer: what older ones still send is dropped
        self._consumed = 0  # consumer sequence of the last message from the current consumer
        self._rebuilding: asyncio.Task[None] | None = None
        self._stopped = False
        self.heard = asyncio.get_running_loop().time()  # last message or heartbeat

    async def start(self) -> None:
        """Create the first consumer (Unavailable if JetStream does not answer)."""
        if self._restart:
            self._created = await self._stream_created()
        await self._open()
        self._backbone._follow(self)

    def lost(self, why: str) -> None:
        """The consumer may be gone: rebuild it (once at a time) until that works."""
        if self._stopped or (self._rebuilding is not None and not self._rebuilding.done()):
            return
        self._rebuilding = asyncio.create_task(self._rebuild(why))

    async def unsubscribe(self) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stopped = True
        self._backbone._unfollow(self)
        if self._rebuilding is not None:
            self._rebuilding.cancel()
        await self._drop_subscription()

    async def _rebuild(self, why: str) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        failures = 0
        while not self._stopped:
            try:
                await self._backbone._in_turn(self._stream, self._reopen)
                log.info(
                    "consumer on %s rebuilt after %.2f s (%s)",
                    self._subject,
                    loop.time() - began,
                    why,
                    extra={"after": self._last},
                )
                return
            except Unavailable as exc:
                if failures % 10 == 0:  # an election's worth of asking, or every 10 s
                    log.warning("consumer on %s not rebuilt yet: %s", self._subject, exc)
                failures += 1  # e.g. the stream is gone: ask less often
                await asyncio.sleep(API_RETRY_S if failures < 4 else 1.0)

    async def _reopen(self) -> None:
        """`_open`, asking on for as long as an election may take; with `restart`,
        from the current entries if the stream was recreated."""
        if self._restart:
            created = await self._stream_created(REBUILD_BUDGET_S, REBUILD_ASK_S)
            if created != self._created:
                log.warning("%s was recreated: reading its current entries", self._stream)
                self._created, self._last = created, None
        await self._open(REBUILD_BUDGET_S, REBUILD_ASK_S)

    async def _stream_created(
        self, budget_s: float = API_BUDGET_S, every_s: float = API_RETRY_S
    ) -> str:
        info = await self._backbone._stream_info(
            self._stream, f"stream {self._stream}", budget_s, every_s
        )
        return _epoch(info)

    async def _open(self, budget_s: float = API_BUDGET_S, every_s: float = API_RETRY_S) -> None:
        """A new inbox and a consumer delivering to it from after the last offset;
        whatever the old consumer still sends goes nowhere."""
        await self._drop_subscription()
        self.heard = asyncio.get_running_loop().time()
        self._consumed = 0
        self._generation += 1
        generation = self._generation

        async def receive(msg: Msg) -> None:
            if generation == self._generation and not self._stopped:
                await self._receive(msg)

        with self._backbone._store(f"consumer on {self._stream}"):
            inbox = self._backbone.client.new_inbox()
            sub = await self._backbone.client.subscribe(
                inbox, cb=receive, pending_msgs_limit=1_000_000, pending_bytes_limit=256 << 20
            )
        self._sub = sub
        config = ConsumerConfig(
            name=NUID().next().decode(),
            deliver_subject=inbox,
            filter_subject=self._subject,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            flow_control=True,
            idle_heartbeat=STREAM_HEARTBEAT_S,
            inactive_threshold=FOLLOW_ORPHAN_S,
            mem_storage=True,
            num_replicas=1,
        )
        if self._last is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self._last + 1
        try:
            await self._backbone._create_push_consumer(self._stream, config, budget_s, every_s)
        except Unavailable:
            if self._sub is sub:
                await self._drop_subscription()
            raise

    async def _drop_subscription(self) -> None:
        self._generation += 1
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _receive(self, msg: Msg) -> None:
        self.heard = asyncio.get_running_loop().time()
        headers = msg.headers or {}
        if headers.get("Status") == "100":  # heartbeat or flow control
            await self._control(msg, headers)
            return
        if headers.get("Status"):
            self.lost(f"status {headers.get('Status')} {headers.get('Description', '')}")
            return
        try:
            sequence = msg.metadata.sequence
        except nats.errors.NotJSMessageError:
            return  # not from a consumer: nothing to hand on
        if sequence.consumer != self._consumed + 1:
            self.lost(f"missed messages {self._consumed + 1}..{sequence.consumer - 1}")
            return
        self._consumed = sequence.consumer
        if self._last is not None and sequence.stream <= self._last:
            return  # a repeat
        self._last = sequence.stream
        self._handler(Delivery(msg.subject, msg.data, msg.headers, None, sequence.stream))

    async def _control(self, msg: Msg, headers: dict[str, str]) -> None:
        """Answer flow control; a heartbeat naming a newer last message means some
        were lost on the way (e.g. while the backbone reconnected)."""
        for reply in (msg.reply, headers.get("Nats-Consumer-Stalled")):
            if reply:
                with contextlib.suppress(nats.errors.Error):
                    await self._backbone.client.publish(reply)
        last = headers.get("Nats-Last-Consumer")
        if last is not None and last.isdigit() and int(last) != self._consumed:
            self.lost(f"heartbeat after consumer sequence {last}, have {self._consumed}")
