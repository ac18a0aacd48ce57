"""Replicated state on a real 3-node NATS cluster, and one node lost while it is used.

Streams and buckets are R3 on a cluster (R1 on a single server); older R1 ones are
raised. Then, with edges on the cluster, clients subscribed and logging in with
tickets, and a backend publishing, one node is killed (SIGKILL) and restarted:
the stream leader's, each bucket leader's, and an edge's own node in turn.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StreamInfo

from switchboard import channelstore
from switchboard.channel_config import ChannelSpec, HistorySpec
from switchboard.client import Client
from switchboard.natsserver import NatsCluster, NatsServer
from tests.conftest import token
from tests.nats_cluster import ClusterEdges, cluster_edges, connect, nats_cluster

__all__ = ["cluster_edges", "nats_cluster"]

BUCKETS = ("sb_channels", "sb_edges", "sb_tickets", "sb_presence")


def channel_cli(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`switchboard channel ...` as a user runs it, with SB_NATS_URL listing every node."""
    return subprocess.run(
        [sys.executable, "-m", "switchboard", "channel", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=os.environ | {"SB_NATS_URL": url},
    )


def manifest(name: str, spec: str) -> str:
    head = "apiVersion: switchboard.dev/v1alpha1\nkind: Channel\n"
    return f"{head}metadata: {{name: {name}}}\nspec: {spec}\n"


async def stream_info(nc: NatsClient, stream: str) -> StreamInfo:
    return await nc.jetstream().stream_info(stream)


async def copies(nc: NatsClient, stream: str) -> tuple[int, int]:
    """(configured replicas, servers that hold a copy now: the leader and its peers)."""
    info = await stream_info(nc, stream)
    peers = (info.cluster.replicas or []) if info.cluster else []
    leader = 1 if info.cluster and info.cluster.leader else 0
    return int(info.config.num_replicas or 1), leader + len(peers)


async def ticket_login(edge_http: str, edge_ws: str, user: str) -> Client:
    """POST /v1/tickets with a JWT, then connect with `?ticket=` (as a browser does)."""
    import urllib.request

    def post() -> str:
        request = urllib.request.Request(
            f"{edge_http}/v1/tickets",
            method="POST",
            headers={"Authorization": f"Bearer {token(user)}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            import json

            return str(json.load(response)["ticket"])

    ticket = await asyncio.to_thread(post)
    return await Client.connect(edge_ws, ticket=ticket)


async def test_existing_r1_state_is_raised_to_r3(
    nats_cluster: NatsCluster, cluster_edges: ClusterEdges
) -> None:
    nc = await connect(nats_cluster)
    js = nc.jetstream()
    # An older install: every bucket and a history stream at one copy.
    for bucket in BUCKETS:
        await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, replicas=1))
    old = channel_cli(
        nats_cluster.url,
        "apply",
        "-f",
        "-",
        stdin=manifest("hist", "{history: {size: 1000, ttl: 10m, replicas: 1}}"),
    )
    assert old.returncode == 0, old.stderr
    assert await copies(nc, "SB_CH_hist") == (1, 1)  # the Channel asked for one copy
    assert await copies(nc, "KV_sb_channels") == (3, 3)  # the CLI raised its bucket
    for bucket in ("sb_edges", "sb_tickets", "sb_presence"):
        assert await copies(nc, f"KV_{bucket}") == (1, 1)

    # Without `replicas` the stream follows the cluster (auto): raised on the next
    # reconcile (here the CLI; the operator does the same on resume or update).
    applied = channel_cli(
        nats_cluster.url,
        "apply",
        "-f",
        "-",
        stdin=manifest("hist", "{history: {size: 1000, ttl: 10m}}")
        + "---\n"
        + manifest("pres", "{presence: true}"),
    )
    assert applied.returncode == 0, applied.stderr
    assert await copies(nc, "SB_CH_hist") == (3, 3)

    # An edge raises its own buckets when it first uses them: a ticket login, a
    # presence subscription, its stats.
    edge = cluster_edges.start("edge-r", stats_interval_s="0.5")
    client = await ticket_login(edge.http_url, edge.ws_url, "alice")
    await client.subscribe("pres:room")
    await asyncio.sleep(1.5)  # a stats report
    for bucket in ("sb_tickets", "sb_presence", "sb_edges"):
        assert await copies(nc, f"KV_{bucket}") == (3, 3), bucket
    await client.close()
    edge.stop()
    cluster_edges.started.remove(edge)
    await nc.close()


async def test_new_state_is_r3_even_with_a_node_down(nats_cluster: NatsCluster) -> None:
    """`auto` reads the cluster from the server's INFO (configured, not live), so a
    node that is down when a stream or bucket is created does not make it R1."""
    victim = nats_cluster.nodes[2]
    victim.kill()
    try:
        await asyncio.sleep(1)
        spec = ChannelSpec(history=HistorySpec(size=10, ttl="1m"))
        await channelstore.put_channel(nats_cluster.url, "downtime", spec)
        nc = await connect(nats_cluster)
        kv = await channelstore.ensure_bucket(
            nc, "sb_probe", 0, channelstore.replicas_for(nc, "auto")
        )
        await kv.put("k", b"v")
        assert (await copies(nc, "SB_CH_downtime"))[0] == 3
        assert (await copies(nc, "KV_sb_probe"))[0] == 3
    finally:
        victim.start()
    await asyncio.to_thread(nats_cluster.wait_ready)

    # the restarted node catches up: three current copies
    async def all_current(stream: str) -> bool:
        info = await stream_info(nc, stream)
        peers = info.cluster.replicas if info.cluster else None
        return bool(peers) and len(peers or []) == 2 and all(p.current for p in peers or [])

    for stream in ("SB_CH_downtime", "KV_sb_probe"):
        async with asyncio.timeout(15):
            while not await all_current(stream):
                await asyncio.sleep(0.2)
    await js_cleanup(nc, "SB_CH_downtime", "KV_sb_probe")
    await nc.close()


async def js_cleanup(nc: NatsClient, *streams: str) -> None:
    for stream in streams:
        await nc.jetstream().delete_stream(stream)


async def test_single_server_keeps_one_copy_and_refuses_three(nats_server: NatsServer) -> None:
    """Dev mode: one server, so `auto` is R1; R3 asked of it is refused, named."""
    nc = await nats.connect(nats_server.url)
    assert channelstore.replicas_for(nc, "auto") == 1
    await nc.close()
    one = channel_cli(
        nats_server.url, "apply", "-f", "-", stdin=manifest("solo", "{history: {size: 5, ttl: 1m}}")
    )
    assert one.returncode == 0, one.stderr
    nc = await nats.connect(nats_server.url)
    assert (await stream_info(nc, "SB_CH_solo")).config.num_replicas == 1
    three = channel_cli(
        nats_server.url,
        "apply",
        "-f",
        "-",
        stdin=manifest("solo", "{history: {size: 5, ttl: 1m, replicas: 3}}"),
    )
    assert three.returncode == 1
    assert "stream SB_CH_solo: NATS cannot keep 3 replicas" in three.stderr
    assert (await stream_info(nc, "SB_CH_solo")).config.num_replicas == 1  # unchanged
    assert channel_cli(nats_server.url, "delete", "solo").returncode == 0
    await nc.close()
