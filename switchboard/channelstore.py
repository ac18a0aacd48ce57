"""Writes Channel configs to the `sb_channels` KV bucket (the CLI's side of NATS).

In a cluster the operator writes these entries; in dev mode
`switchboard channel apply -f` does, so both paths produce the same entry.
Streams and buckets are created with the replica count of the NATS they live
on (`ensure_bucket`, also used by edges for theirs), and raised when an older
one has fewer copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from switchboard.channel_config import (
    BUCKET,
    ChannelSpec,
    resolve_replicas,
    stream_name,
    stream_subjects,
)
from switchboard.natsauth import cli_connect_options
from switchboard.settings import ReplicasSetting

CONNECT_TIMEOUT_S = 5
STREAM_NAME_IN_USE = 10058  # JetStream: a stream of that name exists (with another config)
# JetStream's answers when it cannot place that many copies: too few servers in the
# cluster (no suitable peers, insufficient resources), or a server without a cluster.
REPLICAS_REFUSED = {10005, 10023, 10074}
SETTLE_TIMEOUT_S = 10
ATTEMPT_TIMEOUT_S = 2  # one JetStream admin request
ADMIN_DEADLINE_S = 20  # retrying it: longer than a Raft election (4-9 s), twice
RETRY_S = 0.25
T = TypeVar("T")


class ReplicasRefused(nats.errors.Error):
    """NATS cannot keep the requested number of copies; the message says which and why."""


@contextlib.contextmanager
def _placing(what: str, replicas: int) -> Iterator[None]:
    try:
        yield
    except APIError as exc:  # 10074 comes as a server error (500), the others as 400
        if exc.err_code in REPLICAS_REFUSED:
            raise ReplicasRefused(
                f"{what}: NATS cannot keep {replicas} replicas ({exc.description}); "
                "set fewer (jetstream_replicas, or the Channel's history.replicas)"
            ) from None
        raise


DUPLICATE_WINDOW_S = 120  # how long a `msg_id` is remembered
DEV_STATE = Path(tempfile.gettempdir()) / f"switchboard-dev-{os.getuid()}.json"


def default_nats_url() -> str:
    """$SB_NATS_URL, else the running `switchboard dev`'s NATS, else localhost:4222."""
    if url := os.environ.get("SB_NATS_URL"):
        return url
    try:
        return str(json.loads(DEV_STATE.read_text())["nats_url"])
    except (OSError, ValueError, KeyError):
        return "nats://127.0.0.1:4222"


async def connect_once(nats_url: str) -> Client:
    """One connection attempt with a deadline (nats-py alone would retry for minutes)."""

    async def quiet(exc: Exception) -> None:
        """The caller reports the failure itself, once."""

    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            return await nats.connect(
                servers=[u.strip() for u in nats_url.split(",") if u.strip()],
                connect_timeout=2,
                allow_reconnect=False,
                error_cb=quiet,
                **cli_connect_options(),
            )
    except TimeoutError:
        raise ConnectionError(f"no NATS server answered within {CONNECT_TIMEOUT_S} s") from None
    except (nats.errors.Error, OSError) as exc:
        raise ConnectionError(f"{exc.__class__.__name__}: {exc}") from None


def _admin(nc: Client) -> JetStreamContext:
    """JetStream for creating and changing streams, with short attempts (see
    `_patiently`): a create that takes longer (~4 s with a node down, while the new
    group elects its leader) succeeds when repeated, as the same config is accepted."""
    return nc.jetstream(timeout=ATTEMPT_TIMEOUT_S)


def is_clustered(nc: Client) -> bool:
    """Whether the server we are connected to belongs to a NATS cluster (its INFO
    names one). Configuration, not liveness: true while a member is down."""
    info: dict[str, object] = getattr(nc, "_server_info", None) or {}
    return bool(info.get("cluster"))


def replicas_for(nc: Client, setting: ReplicasSetting) -> int:
    return resolve_replicas(setting, is_clustered(nc))


async def ensure_bucket(
    nc: Client,
    name: str,
    ttl_s: float,
    replicas: int,
    op_timeout_s: float = 5,
    *,
    owner: bool = True,
) -> KeyValue:
    """The KV bucket `name`: created with `replicas` copies if missing; if it has
    fewer, raised to `replicas` by its `owner` (never lowered: another writer may want
    more; a reader, e.g. an edge of `sb_channels`, may not change it). The handle
    returned uses nats-py's usual timeouts: a write the stream leader never answers
    (it is being replaced) does not get any answer later either."""
    js = _admin(nc)
    try:
        info = await js.stream_info(f"KV_{name}")
    except NotFoundError:
        config = KeyValueConfig(bucket=name, ttl=ttl_s or None, history=1, replicas=replicas)
        try:
            with _placing(f"bucket {name}", replicas):
                await js.create_key_value(config)
        except BadRequestError as exc:  # created meanwhile by another process: use it
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
        info = await js.stream_info(f"KV_{name}")
    if owner and (info.config.num_replicas or 1) < replicas:
        info.config.num_replicas = replicas
        with _placing(f"bucket {name}", replicas):
            await js.update_stream(info.config)
        await _settle(nc, f"KV_{name}")
    return await nc.jetstream(timeout=op_timeout_s).key_value(name)


async def _settle(nc: Client, stream: str) -> None:
    """After a change of replicas JetStream re-forms the stream's group, and a write in
    that moment (~0.1-0.3 s) is not answered at all: wait until it has a leader."""
    js = _admin(nc)
    async with asyncio.timeout(SETTLE_TIMEOUT_S):
        while True:
            info = await js.stream_info(stream)
            if info.cluster is None or info.cluster.leader:
                return
            await asyncio.sleep(0.05)


async def channels_bucket(nc: Client, replicas: ReplicasSetting = "auto") -> KeyValue:
    return await ensure_bucket(nc, BUCKET, 0, replicas_for(nc, replicas), ATTEMPT_TIMEOUT_S)


async def _patiently(op: Callable[[], Awaitable[T]]) -> T:
    """Run an idempotent change, again through a Raft election: JetStream drops (does
    not answer) a request that reaches a stream or the meta group while it has no
    leader, so short attempts retried until ADMIN_DEADLINE_S beat one long wait."""
    deadline = time.monotonic() + ADMIN_DEADLINE_S
    while True:
        try:
            return await op()
        except (TimeoutError, NoRespondersError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_S)


async def write_channel(
    nc: Client,
    name: str,
    spec: ChannelSpec,
    prefix: str = "sb",
    replicas: ReplicasSetting = "auto",
) -> int:
    """Write the config; with `history`, create or update its stream first, so an edge
    that sees the entry finds the stream. The stream gets `history.replicas` copies,
    else `replicas`; an existing stream is changed to that count (NATS moves the data).
    Without `history` the config goes first and a stream left from before is deleted
    after it: edges stop using it first, and the config does not wait on the JetStream
    meta leader (which the delete needs, and which a lost node can take 4-9 s to elect)."""
    return await _patiently(lambda: _write_channel(nc, name, spec, prefix, replicas))


async def _write_channel(
    nc: Client, name: str, spec: ChannelSpec, prefix: str, replicas: ReplicasSetting
) -> int:
    js = _admin(nc)
    if spec.history is None:
        revision = await (await channels_bucket(nc, replicas)).put(name, spec.to_json())
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream_name(name))
        return revision
    config = StreamConfig(
        name=stream_name(name),
        subjects=stream_subjects(prefix, name),
        max_msgs_per_subject=spec.history.size,
        max_age=spec.history.ttl_seconds,
        duplicate_window=min(DUPLICATE_WINDOW_S, spec.history.ttl_seconds),
        storage=StorageType.FILE,
        num_replicas=spec.history.replicas or replicas_for(nc, replicas),
    )
    with _placing(f"stream {config.name}", config.num_replicas or 1):
        try:
            before = (await js.stream_info(stream_name(name))).config.num_replicas
            await js.update_stream(config)
            if (before or 1) != config.num_replicas:
                await _settle(nc, stream_name(name))
        except NotFoundError:
            await js.add_stream(config)
    return await (await channels_bucket(nc, replicas)).put(name, spec.to_json())


async def erase_channel(nc: Client, name: str, replicas: ReplicasSetting = "auto") -> None:
    """Remove the config, then the stream (history is deleted with its Channel)."""

    async def erase() -> None:
        await (await channels_bucket(nc, replicas)).delete(name)
        with contextlib.suppress(NotFoundError):
            await _admin(nc).delete_stream(stream_name(name))

    await _patiently(erase)


async def put_channel(nats_url: str, name: str, spec: ChannelSpec, prefix: str = "sb") -> int:
    nc = await connect_once(nats_url)
    try:
        return await write_channel(nc, name, spec, prefix)
    finally:
        await nc.close()


async def delete_channel(nats_url: str, name: str) -> None:
    nc = await connect_once(nats_url)
    try:
        await erase_channel(nc, name)
    finally:
        await nc.close()


async def list_channels(nats_url: str) -> dict[str, ChannelSpec]:
    nc = await connect_once(nats_url)
    try:
        kv = await channels_bucket(nc)
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return {}
        return {k: ChannelSpec.from_json((await kv.get(k)).value or b"{}") for k in keys}
    finally:
        await nc.close()


async def backend_publish(nats_url: str, subject: str, data: bytes) -> None:
    """Publish as a backend would (the `helm test` probe proves the backend role works)."""
    nc = await connect_once(nats_url)
    try:
        await nc.publish(subject, data)
        await nc.flush()
    finally:
        await nc.close()
