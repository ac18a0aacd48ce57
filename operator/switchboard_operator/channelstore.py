"""Writes Channel configs to the `sb_channels` KV bucket.

In a cluster the operator writes these entries; in dev mode
`switchboard channel apply -f` does, so both paths produce the same entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from switchboard.contract.channel_config import BUCKET, ChannelSpec, stream_name, stream_subjects
from switchboard.contract.settings import ReplicasSetting
from switchboard.jetstream import (
    ATTEMPT_TIMEOUT_S,
    admin,
    connect_once,
    ensure_bucket,
    placing,
    replicas_for,
    settle,
)

ADMIN_DEADLINE_S = 20  # retrying it: longer than a Raft election (4-9 s), twice
RETRY_S = 0.25
DUPLICATE_WINDOW_S = 120  # how long a `msg_id` is remembered
T = TypeVar("T")


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
    js = admin(nc)
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
    with placing(f"stream {config.name}", config.num_replicas or 1):
        try:
            before = (await js.stream_info(stream_name(name))).config.num_replicas
            await js.update_stream(config)
            if (before or 1) != config.num_replicas:
                await settle(nc, stream_name(name))
        except NotFoundError:
            await js.add_stream(config)
    return await (await channels_bucket(nc, replicas)).put(name, spec.to_json())


async def erase_channel(nc: Client, name: str, replicas: ReplicasSetting = "auto") -> None:
    """Remove the config, then the stream (history is deleted with its Channel)."""

    async def erase() -> None:
        await (await channels_bucket(nc, replicas)).delete(name)
        with contextlib.suppress(NotFoundError):
            await admin(nc).delete_stream(stream_name(name))

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
