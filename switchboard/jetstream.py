"""JetStream provisioning every component shares: one bounded connection attempt,
buckets created with the replica count of the NATS they live on (and raised when an
older one has fewer copies), and the refusal when NATS cannot keep that many.

The one module outside the components' own backbones that imports nats: the edge
(`edge.backbone`), the operator (`switchboard_operator.backbone`,
`switchboard_operator.channelstore`) and the CLI build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from switchboard.contract import errors
from switchboard.contract.channel_config import resolve_replicas
from switchboard.contract.names import kv_stream
from switchboard.contract.natsauth import cli_connect_options
from switchboard.contract.settings import ReplicasSetting

CONNECT_TIMEOUT_S = 5
STREAM_NAME_IN_USE = 10058  # JetStream: a stream of that name exists (with another config)
# JetStream's answers when it cannot place that many copies: too few servers in the
# cluster (no suitable peers, insufficient resources), or a server without a cluster.
REPLICAS_REFUSED = {10005, 10023, 10074}
SETTLE_TIMEOUT_S = 10
ATTEMPT_TIMEOUT_S = 2  # one JetStream admin request


class ReplicasRefused(errors.ReplicasRefused, nats.errors.Error):
    """NATS cannot keep the requested number of copies; the message says which and why.
    A NATS error too, so that a component's backbone that turns NATS errors into
    `Unavailable` treats it as one."""


@contextlib.contextmanager
def placing(what: str, replicas: int) -> Iterator[None]:
    try:
        yield
    except APIError as exc:  # 10074 comes as a server error (500), the others as 400
        if exc.err_code in REPLICAS_REFUSED:
            raise ReplicasRefused(
                f"{what}: NATS cannot keep {replicas} replicas ({exc.description}); "
                "set fewer (jetstream_replicas, or the Channel's history.replicas)"
            ) from None
        raise


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


def admin(nc: Client) -> JetStreamContext:
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
    js = admin(nc)
    try:
        info = await js.stream_info(kv_stream(name))
    except NotFoundError:
        config = KeyValueConfig(bucket=name, ttl=ttl_s or None, history=1, replicas=replicas)
        try:
            with placing(f"bucket {name}", replicas):
                await js.create_key_value(config)
        except BadRequestError as exc:  # created meanwhile by another process: use it
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
        info = await js.stream_info(kv_stream(name))
    if owner and (info.config.num_replicas or 1) < replicas:
        info.config.num_replicas = replicas
        with placing(f"bucket {name}", replicas):
            await js.update_stream(info.config)
        await settle(nc, kv_stream(name))
    return await nc.jetstream(timeout=op_timeout_s).key_value(name)


async def settle(nc: Client, stream: str) -> None:
    """After a change of replicas JetStream re-forms the stream's group, and a write in
    that moment (~0.1-0.3 s) is not answered at all: wait until it has a leader."""
    js = admin(nc)
    async with asyncio.timeout(SETTLE_TIMEOUT_S):
        while True:
            info = await js.stream_info(stream)
            if info.cluster is None or info.cluster.leader:
                return
            await asyncio.sleep(0.05)
