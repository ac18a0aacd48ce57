"""Writes Channel configs to the `sb_channels` KV bucket (the CLI's side of NATS).

In a cluster the operator writes these entries; in dev mode
`switchboard channel apply -f` does, so both paths produce the same entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from switchboard.channel_config import BUCKET, ChannelSpec, stream_name, stream_subjects

CONNECT_TIMEOUT_S = 5
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
                nats_url, connect_timeout=2, allow_reconnect=False, error_cb=quiet
            )
    except TimeoutError:
        raise ConnectionError(f"no NATS server answered within {CONNECT_TIMEOUT_S} s") from None
    except (nats.errors.Error, OSError) as exc:
        raise ConnectionError(f"{exc.__class__.__name__}: {exc}") from None


async def channels_bucket(nc: Client) -> KeyValue:
    js = nc.jetstream()
    try:
        return await js.key_value(BUCKET)
    except (NotFoundError, BucketNotFoundError):
        return await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1))


async def write_channel(nc: Client, name: str, spec: ChannelSpec, prefix: str = "sb") -> int:
    """Write the config; with `history`, create or update its stream first, so an edge
    that sees the entry finds the stream."""
    js = nc.jetstream()
    if spec.history is not None:
        config = StreamConfig(
            name=stream_name(name),
            subjects=stream_subjects(prefix, name),
            max_msgs_per_subject=spec.history.size,
            max_age=spec.history.ttl_seconds,
            duplicate_window=min(DUPLICATE_WINDOW_S, spec.history.ttl_seconds),
            storage=StorageType.FILE,
        )
        try:
            await js.update_stream(config)
        except NotFoundError:
            await js.add_stream(config)
    else:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream_name(name))
    return await (await channels_bucket(nc)).put(name, spec.to_json())


async def erase_channel(nc: Client, name: str) -> None:
    """Remove the config, then the stream (history is deleted with its Channel)."""
    await (await channels_bucket(nc)).delete(name)
    with contextlib.suppress(NotFoundError):
        await nc.jetstream().delete_stream(stream_name(name))


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
