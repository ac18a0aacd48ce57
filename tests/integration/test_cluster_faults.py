"""Replicated state on a real 3-node NATS cluster, and one node lost while it is used.

Streams and buckets are R3 on a cluster (R1 on a single server); older R1 ones are
raised. Then, with edges on the cluster, clients subscribed and logging in with
tickets, and a backend publishing, one node is killed (SIGKILL) and restarted:
the stream leader's, each bucket leader's, and an edge's own node in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StreamInfo
from nats.js.client import JetStreamContext
from websockets.exceptions import InvalidStatus

from switchboard import jetstream
from switchboard.cli.natsserver import NatsCluster, NatsServer
from switchboard.client import Client, Closed, SwitchboardError
from switchboard.client.resilient import ResilientClient
from switchboard.contract.channel_config import ChannelSpec, HistorySpec
from switchboard_operator import channelstore
from tests.conftest import Edge, token
from tests.nats_cluster import ClusterEdges, cluster_edges, connect, nats_cluster, node_of

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


async def copies_once_placed(nc: NatsClient, stream: str) -> tuple[int, int]:
    """`copies` once the servers hold as many as configured, or after 10 s: right
    after a raise, the stream's info may list the new peers a moment later."""
    deadline = time.monotonic() + 10
    while (found := await copies(nc, stream))[0] != found[1] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return found


async def ticket_login(edge_http: str, edge_ws: str, user: str) -> Client:
    """POST /v1/tickets with a JWT, then connect with `?ticket=` (as a browser does)."""

    def post() -> str:
        request = urllib.request.Request(
            f"{edge_http}/v1/tickets",
            method="POST",
            headers={"Authorization": f"Bearer {token(user)}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(json.load(response)["ticket"])

    ticket = await asyncio.to_thread(post)
    return await Client.connect(edge_ws, ticket=ticket)


async def test_existing_r1_state_is_raised_to_r3(
    nats_cluster: NatsCluster, cluster_edges: ClusterEdges
) -> None:
    operator_url = nats_cluster.url_for("operator")  # the CLI writes channels as the operator
    nc = await connect(nats_cluster, "edge")  # edges create their buckets (and read all)
    js = nc.jetstream()
    # An older install: every bucket and a history stream at one copy.
    for bucket in BUCKETS:
        await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, replicas=1))
    old = channel_cli(
        operator_url,
        "apply",
        "-f",
        "-",
        stdin=manifest("hist", "{history: {size: 1000, ttl: 10m, replicas: 1}}"),
    )
    assert old.returncode == 0, old.stderr
    assert await copies(nc, "SB_CH_hist") == (1, 1)  # the Channel asked for one copy
    assert await copies_once_placed(nc, "KV_sb_channels") == (3, 3)  # the CLI raised its bucket
    for bucket in ("sb_edges", "sb_tickets", "sb_presence"):
        assert await copies(nc, f"KV_{bucket}") == (1, 1)

    # Without `replicas` the stream follows the cluster (auto): raised on the next
    # reconcile (here the CLI; the operator does the same on resume or update).
    applied = channel_cli(
        operator_url,
        "apply",
        "-f",
        "-",
        stdin=manifest("hist", "{history: {size: 1000, ttl: 10m}}")
        + "---\n"
        + manifest("pres", "{presence: true}"),
    )
    assert applied.returncode == 0, applied.stderr
    assert await copies_once_placed(nc, "SB_CH_hist") == (3, 3)

    # An edge raises its own buckets when it first uses them: a ticket login, a
    # presence subscription, its stats.
    edge = cluster_edges.start("edge-r", stats_interval_s="0.5")
    client = await ticket_login(edge.http_url, edge.ws_url, "alice")
    await client.subscribe("pres:room")
    await asyncio.sleep(1.5)  # a stats report
    for bucket in ("sb_tickets", "sb_presence", "sb_edges"):
        assert await copies_once_placed(nc, f"KV_{bucket}") == (3, 3), bucket
    await client.close()
    edge.stop()
    cluster_edges.started.remove(edge)
    await nc.close()


async def test_new_state_is_r3_even_with_a_node_down(nats_cluster: NatsCluster) -> None:
    """`auto` reads the cluster from the server's INFO (configured, not live), so a
    node that is down when a stream or bucket is created does not make it R1."""
    # Not the meta leader: creating needs one, and electing a new one takes 4-9 s.
    leader = nats_cluster.meta_leader()
    victim = next(node for node in nats_cluster.nodes if node.name != leader)
    victim.kill()
    try:
        await asyncio.sleep(1)
        spec = ChannelSpec(history=HistorySpec(size=10, ttl="1m"))
        nc = await connect(nats_cluster, "operator")
        # Retried as the operator does (every 5 s): the killed node may have led
        # `sb_channels`, which takes its writes again after an election (4-9 s).
        async with asyncio.timeout(40):
            while True:
                try:
                    url = nats_cluster.url_for("operator")
                    await channelstore.put_channel(url, "downtime", spec)
                    await jetstream.ensure_bucket(
                        nc, "sb_probe", 0, jetstream.replicas_for(nc, "auto")
                    )
                    break
                except (nats.errors.Error, OSError):
                    await asyncio.sleep(1)
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
    operator_url = nats_server.url_for("operator")  # channels are the operator's to write
    nc = await nats.connect(operator_url)
    assert jetstream.replicas_for(nc, "auto") == 1
    await nc.close()
    one = channel_cli(
        operator_url, "apply", "-f", "-", stdin=manifest("solo", "{history: {size: 5, ttl: 1m}}")
    )
    assert one.returncode == 0, one.stderr
    nc = await nats.connect(operator_url)
    assert (await stream_info(nc, "SB_CH_solo")).config.num_replicas == 1
    three = channel_cli(
        operator_url,
        "apply",
        "-f",
        "-",
        stdin=manifest("solo", "{history: {size: 5, ttl: 1m, replicas: 3}}"),
    )
    assert three.returncode == 1
    assert "stream SB_CH_solo: NATS cannot keep 3 replicas" in three.stderr
    assert (await stream_info(nc, "SB_CH_solo")).config.num_replicas == 1  # unchanged
    assert channel_cli(operator_url, "delete", "solo").returncode == 0
    await nc.close()


# -- one node lost while the tier is in use -------------------------------------------

HISTORY = "faults:room"  # governed by the Channel `faults`, with history (R3)
PLAIN = "plain:room"  # no Channel: fire-and-forget
ROUNDS = ("SB_CH_faults", "KV_sb_tickets", "KV_sb_channels", "KV_sb_presence", "KV_sb_edges")
DOWN_S = 3.0  # how long the killed node stays down
# A lost Raft leader (of a stream, a bucket, or JetStream's meta group) is replaced
# after 4-9 s (nats-server raft.go: minElectionTimeoutDefault..maxElectionTimeoutDefault);
# until then that stream or bucket takes no writes. Everything must be back within it,
# plus room for a split vote's second campaign and the writers' retry pace (measured:
# 4-9 s on 2 busy cores).
ELECTION_BOUND_S = 15.0
LIVE_BOUND_S = 1.0  # once JetStream takes writes again, they reach clients this fast
PUBLISH_EVERY_S = 0.02  # the backend's pace: 50 events/s on each channel


@dataclass
class Received:
    """What one subscriber got, stamped with the monotonic time it arrived."""

    name: str
    edge: str
    events: list[tuple[float, int, int]] = field(default_factory=list)  # (t, offset, n)
    plain: list[float] = field(default_factory=list)
    gaps: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Acked:
    """Every event the backend published and JetStream acked: n → (offset, ack time)."""

    by_n: dict[int, tuple[int, float]] = field(default_factory=dict)

    def after(self, t: float) -> list[tuple[int, int, float]]:
        return sorted((n, off, ta) for n, (off, ta) in self.by_n.items() if ta >= t)


@dataclass
class Probe:
    """Successes and failures of one operation over time."""

    ok: list[float] = field(default_factory=list)
    failed: list[tuple[float, str]] = field(default_factory=list)

    def back_after(self, t: float) -> float | None:
        """Time from `t` to the first success after the last failure following `t`
        (None: it never failed after `t`, or never worked again)."""
        failures = [tf for tf, _ in self.failed if tf >= t]
        if not failures:
            return None
        later = [to for to in self.ok if to > failures[-1]]
        return (later[0] - t) if later else float("inf")


async def backend(
    js: JetStreamContext,
    nc: NatsClient,
    acked: Acked,
    stop: asyncio.Event,
    subject: str = "sb.ch.faults.room",
    plain: str | None = "sb.ch.plain.room",
) -> None:
    """Publishes n = 0, 1, 2... to both channels. History events go through JetStream
    and are retried with the same Nats-Msg-Id until acked, as a careful backend does:
    what is acked must not be lost; what never was, was never promised."""
    n = 0
    while not stop.is_set():
        data = json.dumps({"n": n}).encode()
        while not stop.is_set():
            try:
                ack = await js.publish(
                    subject, data, timeout=0.5, headers={"Nats-Msg-Id": f"{subject}-{n}"}
                )
                acked.by_n[n] = (int(ack.seq), time.monotonic())
                break
            except (nats.errors.Error, TimeoutError):
                await asyncio.sleep(0.05)
        if plain is not None:
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(plain, data)
        n += 1
        await asyncio.sleep(PUBLISH_EVERY_S)


async def client_publisher(edge: Edge, acked: Acked, stop: asyncio.Event) -> None:
    """A WebSocket client publishing n = -1, -2, -3... through an edge, which acks
    each with its offset once JetStream stored it; refused publishes (`unavailable`
    while the edge's backbone is cut, or JetStream does not answer) are sent again
    with the same `msg_id`, so a retry after a lost ack is stored once."""
    client = await Client.connect(edge.ws_url, token=token("writer"))
    try:
        n = -1
        while not stop.is_set():
            try:
                ack = await client.publish(HISTORY, {"n": n}, msg_id=f"c{n}")
                acked.by_n[n] = (int(ack["offset"]), time.monotonic())
                n -= 1
                await asyncio.sleep(PUBLISH_EVERY_S * 2)
            except (SwitchboardError, TimeoutError):
                await asyncio.sleep(0.05)
    finally:
        await client.close()


async def read_raw(client: Client, into: Received) -> None:
    async for msg in client.events():
        now = time.monotonic()
        payload = msg.get("payload") or {}
        if msg["type"] == "gap":
            into.gaps.append((now, str(payload.get("channel"))))
        elif msg["type"] == "event" and payload.get("channel") == HISTORY:
            into.events.append((now, int(payload["offset"]), int(payload["data"]["n"])))
        elif msg["type"] == "event" and payload.get("channel") == PLAIN:
            into.plain.append(now)


async def read_resilient(client: ResilientClient, into: Received) -> None:
    async for msg in client.events():
        payload = msg.get("payload") or {}
        if msg.get("type") == "event" and payload.get("channel") == HISTORY:
            into.events.append(
                (time.monotonic(), int(payload["offset"]), int(payload["data"]["n"]))
            )


def post_ticket(edge: Edge, user: str) -> str:
    request = urllib.request.Request(
        f"{edge.http_url}/v1/tickets",
        method="POST",
        headers={"Authorization": f"Bearer {token(user)}"},
    )
    with urllib.request.urlopen(request, timeout=2) as response:
        return str(json.load(response)["ticket"])


async def probe_tickets(edges: list[Edge], probe: Probe, stop: asyncio.Event) -> None:
    """Log in with a ticket every 100 ms, round robin over the edges."""
    for i in itertools.count():
        if stop.is_set():
            return
        edge = edges[i % len(edges)]
        started = time.monotonic()
        try:
            ticket = await asyncio.to_thread(post_ticket, edge, f"probe-{i}")
            client = await Client.connect(edge.ws_url, ticket=ticket, open_timeout=3)
            await client.close()
            probe.ok.append(started)
        except (OSError, urllib.error.HTTPError, InvalidStatus, Closed, TimeoutError) as exc:
            probe.failed.append((started, repr(exc)[:120]))
        await asyncio.sleep(0.1)


async def config_change(
    url: str, edges: list[Edge], limit: int, started: float
) -> tuple[float, float]:
    """Write Channel `cfg` with maxMessageBytes `limit` (retrying as the operator does)
    while watching every edge until it enforces it: seconds from `started` until the
    write succeeded, and until the last edge applied it."""
    spec = ChannelSpec(max_message_bytes=limit)

    async def write() -> float:
        while True:
            try:
                await channelstore.put_channel(url, "cfg", spec)
                return time.monotonic() - started
            except (OSError, nats.errors.Error):
                await asyncio.sleep(0.2)

    async def enforced(edge: Edge) -> None:
        client = await Client.connect(edge.ws_url, token=token("cfg"))
        try:
            while True:
                try:
                    await client.publish("cfg:x", "x" * 300)  # over 100, under 16384
                    refused = False
                except SwitchboardError as exc:
                    refused = exc.code == "too_large"
                if refused == (limit < 300):
                    return
                await asyncio.sleep(0.05)
        finally:
            await client.close()

    writer = asyncio.create_task(write())
    await asyncio.gather(*(enforced(edge) for edge in edges))
    applied = time.monotonic() - started
    return await writer, applied


async def leader_of(nc: NatsClient, stream: str) -> str:
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                info = await nc.jetstream().stream_info(stream, subjects_filter=None)
                if info.cluster is not None and info.cluster.leader:
                    return str(info.cluster.leader)
            await asyncio.sleep(0.1)


def max_silence(times: list[float], start: float, end: float) -> float:
    """The longest stretch without an arrival inside [start, end]."""
    inside = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


@pytest.mark.timeout(240)
async def test_one_node_lost_and_back_loses_nothing_acked(
    nats_cluster: NatsCluster, cluster_edges: ClusterEdges
) -> None:
    url = nats_cluster.url_for("operator")  # Channels are written as the operator does
    await channelstore.put_channel(
        url, "faults", ChannelSpec(history=HistorySpec(size=100_000, ttl="10m"))
    )
    await channelstore.put_channel(url, "pres", ChannelSpec(presence=True))
    await channelstore.put_channel(url, "cfg", ChannelSpec(max_message_bytes=16384))
    # abuse_errors: the config probe publishes over the limit until it applies
    edges = [
        cluster_edges.start(f"edge-f{i}", stats_interval_s="0.5", abuse_errors="100000")
        for i in range(3)
    ]
    nc = await connect(nats_cluster, "backend")  # publishes, with JetStream acks
    js = nc.jetstream()
    eyes = await connect(nats_cluster, "edge")  # may read any stream's info (leaders)
    assert (await copies(eyes, "SB_CH_faults"))[0] == 3

    # Subscribers: a raw client and a presence member per edge, logged in with tickets,
    # and a ResilientClient over all edges.
    received: list[Received] = []
    tasks: list[asyncio.Task[None]] = []
    clients: list[Client] = []
    for edge in edges:
        client = await ticket_login(edge.http_url, edge.ws_url, f"sub-{edge.name}")
        await client.subscribe(HISTORY)
        await client.subscribe(PLAIN)
        await client.subscribe("pres:room")
        clients.append(client)
        received.append(Received(f"raw@{edge.name}", edge.name))
        tasks.append(asyncio.create_task(read_raw(client, received[-1])))

    async def resilient_token() -> str:
        return token("resilient")

    resilient = ResilientClient([e.ws_url for e in edges], resilient_token)
    await resilient.start()
    await resilient.subscribe(HISTORY)
    received.append(Received("resilient", "any"))
    tasks.append(asyncio.create_task(read_resilient(resilient, received[-1])))

    acked = Acked()
    stop = asyncio.Event()
    publishers = [
        asyncio.create_task(backend(js, nc, acked, stop)),
        asyncio.create_task(client_publisher(edges[1], acked, stop)),
    ]
    tickets = Probe()
    tasks.append(asyncio.create_task(probe_tickets(edges, tickets, stop)))
    await asyncio.sleep(1.0)

    report: list[str] = []
    broken: list[str] = []  # promises NATS lets us keep: must hold
    limit = 100
    targets: list[tuple[str, str | None]] = [(r, None) for r in ROUNDS]
    targets.append(("node of edge-f0", f"sb-edge:{edges[0].name}"))
    for what, connection in targets:
        victim_name = (
            node_of(nats_cluster, connection) if connection else await leader_of(eyes, what)
        )
        assert victim_name is not None, what
        on_victim = {
            e.name for e in edges if node_of(nats_cluster, f"sb-edge:{e.name}") == victim_name
        }
        victim = nats_cluster.node(victim_name)
        was_meta_leader = nats_cluster.meta_leader() == victim_name
        killed = time.monotonic()
        victim.kill()
        written_s, applied_s = await config_change(url, edges, limit, killed)
        await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - killed)))
        victim.start()
        restarted = time.monotonic()
        await asyncio.to_thread(nats_cluster.wait_ready)
        # every event acked so far reaches every subscriber
        target = set(acked.by_n)
        async with asyncio.timeout(30):
            while any(target - {n for _, _, n in r.events} for r in received):
                await asyncio.sleep(0.1)
        settled = time.monotonic()
        # and ticket logins work again, if they stopped (measured, not awaited for ever)
        while tickets.back_after(killed) == float("inf"):
            if time.monotonic() > killed + ELECTION_BOUND_S + 1:
                break
            await asyncio.sleep(0.1)

        # measurements of the round
        acks = [ta for _, _, ta in acked.after(killed - 1)]
        write_stall = max_silence(acks, killed, restarted)
        lags = {
            r.name: max(
                (
                    t - acked.by_n[n][1]
                    for t, _, n in r.events
                    if acked.by_n.get(n, (0, 0.0))[1] >= killed
                ),
                default=0.0,
            )
            for r in received
        }
        stalls = {
            r.name: max_silence([t for t, _, _ in r.events], killed, settled) for r in received
        }
        ticket_back = tickets.back_after(killed)
        plain_gaps = {
            r.edge: [c for t, c in r.gaps if t >= killed and c == PLAIN] for r in received[:3]
        }
        report.append(
            f"{what:16} victim {victim_name}{' (meta leader)' if was_meta_leader else ''} "
            f"(edges on it: {sorted(on_victim) or '-'}): "
            f"writes stalled {write_stall:.2f} s; delivery stall "
            f"{max(stalls.values()):.2f} s, worst ack→client {max(lags.values()):.2f} s; "
            f"tickets back after {'-' if ticket_back is None else round(ticket_back, 2)} s; "
            f"config written after {written_s:.2f} s, "
            f"applied on all edges after {applied_s:.2f} s; "
            f"plain gaps on {sorted(e for e, g in plain_gaps.items() if g)}"
        )
        for edge_name in on_victim:
            if not plain_gaps[edge_name]:
                broken.append(f"{what}: no gap on {PLAIN} at {edge_name}")
        for name, seconds in (("writes", write_stall), ("config write", written_s)):
            if seconds > ELECTION_BOUND_S:
                broken.append(f"{what}: {name} back after {seconds:.2f} s")
        if ticket_back is not None and ticket_back > ELECTION_BOUND_S:
            broken.append(f"{what}: ticket logins back after {ticket_back:.2f} s")
        if max(lags.values()) > LIVE_BOUND_S:
            broken.append(f"{what}: acked events reached clients {max(lags.values()):.2f} s late")
        if applied_s - written_s > LIVE_BOUND_S:
            broken.append(f"{what}: config reached every edge {applied_s - written_s:.2f} s late")
        limit = 16384 if limit == 100 else 100
        await asyncio.sleep(0.5)

    stop.set()
    await asyncio.gather(*publishers)  # nothing is acked after this
    async with asyncio.timeout(30):
        while any(set(acked.by_n) - {n for _, _, n in r.events} for r in received):
            await asyncio.sleep(0.1)
    print("\n" + "\n".join(report))
    print(f"ticket logins: {len(tickets.ok)} ok, {len(tickets.failed)} failed")
    for _, why in tickets.failed[:5]:
        print(f"  failed: {why}")

    for task in tasks:
        task.cancel()
    for client in clients:
        await client.close()
    await resilient.close()
    await nc.close()
    await eyes.close()
    for edge in edges:
        edge.stop()
        cluster_edges.started.remove(edge)

    assert not broken, broken
    # 0 lost, exactly once, in order: every acked event, at every subscriber.
    for r in received:
        offsets = [off for _, off, _ in r.events]
        assert offsets == sorted(set(offsets)), f"{r.name}: duplicates or out of order"
        got = {n for _, _, n in r.events}
        lost = sorted(set(acked.by_n) - got)
        assert not lost, f"{r.name}: lost {len(lost)} acked events, e.g. {lost[:5]}"
        assert all(acked.by_n[n][0] == off for _, off, n in r.events if n in acked.by_n)
    print(
        f"{len(acked.by_n)} events acked ({sum(n < 0 for n in acked.by_n)} published by a "
        "client through an edge), each delivered once and in order to "
        f"{len(received)} subscribers"
    )


async def live_through_a_kill(
    nats_cluster: NatsCluster,
    edge: Edge,
    channel: str,
    victim: NatsServer,
    *,
    dead_for_s: float,
) -> tuple[float, int]:
    """A backend publishes to history channel `channel` (50/s, acked by JetStream)
    while a client of `edge` reads it; `victim` is killed for `dead_for_s`. The worst
    ack→client delay of events acked after the kill, and how many were acked; every
    acked event must arrive once and in order."""
    nc = await connect(nats_cluster, "backend")
    client = await Client.connect(edge.ws_url, token=token("live"))
    async with asyncio.timeout(10):
        while (await client.subscribe(channel))["epoch"] is None:  # config not read yet
            await client.unsubscribe(channel)
            await asyncio.sleep(0.1)
    arrived: list[tuple[float, int, int]] = []  # (t, offset, n)

    async def read() -> None:
        async for msg in client.events():
            if msg["type"] == "event":
                payload = msg["payload"]
                arrived.append((time.monotonic(), int(payload["offset"]), payload["data"]["n"]))

    acked, stop = Acked(), asyncio.Event()
    subject = "sb.ch." + channel.replace(":", ".")
    reader = asyncio.create_task(read())
    publisher = asyncio.create_task(backend(nc.jetstream(), nc, acked, stop, subject, None))
    await asyncio.sleep(1)
    killed = time.monotonic()
    victim.kill()
    await asyncio.sleep(dead_for_s)
    victim.start()
    await asyncio.to_thread(nats_cluster.wait_ready)
    # JetStream takes writes again once the stream has a leader: 4-9 s after the kill,
    # longer after a split vote (ELECTION_BOUND_S). Publish until it does, and on a bit.
    deadline = killed + ELECTION_BOUND_S
    while not acked.after(killed) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert acked.after(killed), f"JetStream took no write {ELECTION_BOUND_S} s after the kill"
    await asyncio.sleep(0.5)
    stop.set()
    await publisher  # nothing is acked after this
    async with asyncio.timeout(10):
        while set(acked.by_n) - {n for _, _, n in arrived}:
            await asyncio.sleep(0.1)
    reader.cancel()
    await client.close()
    await nc.close()
    offsets = [offset for _, offset, _ in arrived]
    assert offsets == sorted(set(offsets)), "duplicates or out of order"
    assert all(acked.by_n[n][0] == offset for _, offset, n in arrived if n in acked.by_n)
    when = {offset: t for t, offset, _ in arrived}
    late = [when[offset] - ta for offset, ta in acked.by_n.values() if ta >= killed]
    return max(late, default=0.0), len(late)


async def test_an_edge_that_stays_connected_rebuilds_a_consumer_lost_with_its_server(
    nats_cluster: NatsCluster, cluster_edges: ClusterEdges
) -> None:
    """The edge's own server survives (no reconnect to react to); the stream leader,
    which holds its consumer, dies: the edge notices the silence and reads on from the
    new leader as soon as that takes writes."""
    url = nats_cluster.url_for("operator")
    await channelstore.put_channel(url, "lone", ChannelSpec(history=HistorySpec(size=10_000)))
    eyes = await connect(nats_cluster, "edge")
    leader = await leader_of(eyes, "SB_CH_lone")
    home = next(node for node in nats_cluster.nodes if node.name != leader)
    edge = cluster_edges.start("edge-lone", nats_url=home.address)  # that server only
    worst, count = await live_through_a_kill(
        nats_cluster, edge, "lone:room", nats_cluster.node(leader), dead_for_s=DOWN_S + 4
    )
    print(f"\nstream leader lost: {count} events acked after, worst ack→client {worst:.2f} s")
    assert node_of(nats_cluster, "sb-edge:edge-lone") == home.name  # never reconnected
    assert count > 0
    assert worst <= LIVE_BOUND_S
    edge.stop()
    cluster_edges.started.remove(edge)
    await channelstore.delete_channel(url, "lone")
    await eyes.close()


async def test_consumers_are_rebuilt_without_waiting_for_a_new_meta_leader(
    nats_cluster: NatsCluster, cluster_edges: ClusterEdges
) -> None:
    """The edge's server is JetStream's meta leader and dies, the stream's leader
    lives: the edge reconnects elsewhere and follows the stream again at once, while
    the meta group is still electing (4-9 s); writes never stop."""
    url = nats_cluster.url_for("operator")
    eyes = await connect(nats_cluster, "edge")
    meta = nats_cluster.meta_leader()
    for attempt in range(10):  # a stream led by another server (placement is random)
        name = f"meta{attempt}"
        await channelstore.put_channel(url, name, ChannelSpec(history=HistorySpec(size=10_000)))
        if await leader_of(eyes, f"SB_CH_{name}") != meta:
            break
        await channelstore.delete_channel(url, name)
    else:
        pytest.fail("every stream created was led by the meta leader")
    edge = cluster_edges.start("edge-meta", nats_url=nats_cluster.node(meta).address)
    worst, count = await live_through_a_kill(
        nats_cluster, edge, f"{name}:room", nats_cluster.node(meta), dead_for_s=DOWN_S
    )
    print(f"\nmeta leader lost: {count} events acked after, worst ack→client {worst:.2f} s")
    assert node_of(nats_cluster, "sb-edge:edge-meta") != meta  # it did reconnect
    assert count > 0
    assert worst <= LIVE_BOUND_S
    edge.stop()
    cluster_edges.started.remove(edge)
    await channelstore.delete_channel(url, name)
    await eyes.close()


async def test_channel_config_watch_starts_over_when_the_bucket_is_recreated(
    nats_cluster: NatsCluster, cluster_edges: ClusterEdges
) -> None:
    """`sb_channels` lost and written again (e.g. NATS restarted without its store):
    edges read the new bucket from its first entry, not on from the revision they had
    reached in the old one (which the new one may never get to)."""
    url = nats_cluster.url_for("operator")
    for limit in (16000, 15000, 14000, 13000):  # the old bucket's revisions run ahead
        await channelstore.put_channel(url, "cfgr", ChannelSpec(max_message_bytes=limit))
    edge = cluster_edges.start("edge-cfgr")
    client = await Client.connect(edge.ws_url, token=token("cfgr"))

    async def refused(size: int) -> bool:
        """Whether the edge refuses `size` bytes as too large (its limit is below)."""
        try:
            await client.publish("cfgr:x", "x" * size)
        except SwitchboardError as exc:
            if exc.code != "too_large":
                raise
            return True
        return False

    async with asyncio.timeout(10):
        while await refused(13500) is False:  # the edge has the newest entry
            await asyncio.sleep(0.05)
    nc = await connect(nats_cluster, "operator")
    await nc.jetstream().delete_stream("KV_sb_channels")
    await channelstore.put_channel(url, "cfgr", ChannelSpec(max_message_bytes=100))  # revision 1
    async with asyncio.timeout(10):  # noticed once the old consumer falls silent (2 s)
        while not await refused(300):
            await asyncio.sleep(0.1)
    await client.close()
    edge.stop()
    cluster_edges.started.remove(edge)
    await channelstore.delete_channel(url, "cfgr")
    await nc.close()
