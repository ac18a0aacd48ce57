"""Drains: SIGTERM or a control command moves every client with reconnect + 1001, paced."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import nats
import pytest
from nats.aio.msg import Msg
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from switchboard.client import Client, Closed, SwitchboardError
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import next_event, scrape_metrics


def readyz(edge: Edge) -> int:
    """The edge's readiness (on its admin port), as a status code."""
    try:
        with urllib.request.urlopen(f"{edge.admin_url}/readyz") as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


async def test_sigterm_with_500_clients_under_publish_traffic_loses_nothing_acked(
    edge_factory: EdgeFactory, edge2: Edge
) -> None:
    edge = edge_factory.start(
        "edge-drain-500",
        drain_reconnects_per_s="250",
        reconnect_jitter_ms="1000",
        new_connections_burst="1000",
    )
    watcher = await Client.connect(edge2.ws_url, token=token("watcher"))
    await watcher.subscribe("drain:room")
    clients = list(
        await asyncio.gather(
            *(Client.connect(edge.ws_url, token=token(f"u{i}")) for i in range(500))
        )
    )
    publishers = clients[:5]
    acked: list[str] = []

    async def publish_until_moved(index: int, client: Client) -> None:
        seq = 0
        while True:
            msg = f"{index}-{seq}"
            try:
                await client.publish("drain:room", msg)
            except (Closed, SwitchboardError):
                return
            acked.append(msg)
            seq += 1

    traffic = [asyncio.create_task(publish_until_moved(i, c)) for i, c in enumerate(publishers)]
    await asyncio.sleep(0.5)
    assert edge.process is not None
    started = time.monotonic()
    edge.process.terminate()
    results = []
    for client in clients:
        msg = await client.next_message(timeout=30)
        while msg["type"] != "reconnect":  # publishers may see their own events first
            msg = await client.next_message(timeout=30)
        results.append((msg["payload"]["after_ms"], await client.wait_closed(30)))
    took = time.monotonic() - started
    await asyncio.gather(*traffic)
    assert [code for _, code in results] == [1001] * 500
    assert all(0 <= after <= 1000 for after, _ in results)
    assert took >= 1.5, f"500 clients at 250/s should take ~2 s, took {took:.2f}"
    assert await asyncio.to_thread(edge.process.wait, 30) == 0
    assert len(acked) > 50

    # every publish the draining edge acknowledged reached the subscriber on edge-2
    seen: set[str] = set()
    while not set(acked) <= seen:
        seen.add((await next_event(watcher, timeout=10))["payload"]["data"])
    await watcher.close()


async def test_control_command_drains_at_the_operator_granted_pace(
    edge_factory: EdgeFactory,
) -> None:
    edge = edge_factory.start("edge-ctl", reconnect_jitter_ms="0")
    nc = await nats.connect(edge_factory.nats.url_for("operator"))  # playing the operator
    asked: list[dict[str, object]] = []

    async def grant(msg: Msg) -> None:
        asked.append(json.loads(msg.data))
        await msg.respond(json.dumps({"reconnects_per_second": 20}).encode())

    await nc.subscribe("sb.operator.drain", cb=grant)
    clients = [await Client.connect(edge.ws_url, token=token(f"c{i}")) for i in range(10)]
    closed_at: list[float] = []

    async def watch(client: Client) -> int | None:
        code = await client.wait_closed(timeout=20)
        closed_at.append(time.monotonic())
        return code

    watchers = [asyncio.create_task(watch(c)) for c in clients]
    reply = await nc.request("sb.edge.edge-ctl.ctl", b'{"command": "drain"}', timeout=5)
    assert json.loads(reply.data) == {"ok": True, "connections": 10}
    assert await asyncio.to_thread(readyz, edge) == 503
    with pytest.raises(InvalidStatus) as refused:
        await connect(edge.ws_url, additional_headers={"Authorization": f"Bearer {token()}"})
    assert refused.value.response.status_code == 503
    assert await asyncio.gather(*watchers) == [1001] * 10
    for client in clients:
        reconnect = (await client.next_message())["payload"]
        assert (reconnect["after_ms"], reconnect["reason"]) == (0, "operator")
        assert isinstance(reconnect["resume_token"], str)
    closed_at.sort()
    assert asked == [{"pod": "edge-ctl", "connections": 10, "reason": "operator"}]
    # 10 connections at the granted 20/s: ~0.45 s from first to last, not all at once
    assert closed_at[-1] - closed_at[0] >= 0.35
    bad = await nc.request("sb.edge.edge-ctl.ctl", b"nonsense", timeout=5)
    assert json.loads(bad.data)["ok"] is False
    counted = await asyncio.to_thread(scrape_metrics, edge)
    assert counted["sb_edge_control_refused_total"] == 1  # logged and counted, nothing done
    await nc.close()


async def test_the_newest_pace_wins_and_a_stale_one_is_refused(
    edge_factory: EdgeFactory,
) -> None:
    """The operator's grant (seq 10, 1/s) and re-paces (by seq) on a real edge: an
    older re-pace is refused and changes nothing; a newer one applies at once."""
    edge = edge_factory.start("edge-seq", reconnect_jitter_ms="0")
    nc = await nats.connect(edge_factory.nats.url_for("operator"))  # playing the operator

    async def grant(msg: Msg) -> None:
        if json.loads(msg.data)["pod"] == "edge-seq":
            await msg.respond(json.dumps({"reconnects_per_second": 1, "seq": 10}).encode())

    await nc.subscribe("sb.operator.drain", cb=grant)
    clients = [await Client.connect(edge.ws_url, token=token(f"q{i}")) for i in range(6)]
    closed = [asyncio.create_task(c.wait_closed(timeout=30)) for c in clients]
    await nc.request("sb.edge.edge-seq.ctl", b'{"command": "drain"}', timeout=5)
    done, _ = await asyncio.wait(closed, return_when=asyncio.FIRST_COMPLETED, timeout=5)
    assert len(done) == 1  # the first move, one interval (1 s) in: the grant applies

    async def repace(rate: float, seq: int) -> dict[str, object]:
        body = {"command": "rate", "reconnects_per_second": rate, "seq": seq}
        reply = await nc.request("sb.edge.edge-seq.ctl", json.dumps(body).encode(), timeout=5)
        return dict(json.loads(reply.data))

    stale = await repace(1000, 5)
    assert stale["ok"] is False and "seq" in str(stale["error"])
    await asyncio.sleep(0.5)
    assert sum(t.done() for t in closed) == 1  # still 1/s
    assert await repace(1000, 20) == {"ok": True}
    assert await asyncio.wait_for(asyncio.gather(*closed), 2) == [1001] * 6
    await nc.close()


async def test_live_stats_reach_the_sb_edges_bucket(edge_factory: EdgeFactory) -> None:
    # The bucket's TTL (10 s default) is set by whichever edge creates it first.
    edge = edge_factory.start("edge-stats", stats_interval_s="0.2")
    clients = [await Client.connect(edge.ws_url, token=token(f"s{i}")) for i in range(3)]
    await clients[0].subscribe("stats:a")
    nc = await nats.connect(edge_factory.nats.url_for("operator"))  # playing the operator
    kv = await nc.jetstream().key_value("sb_edges")

    async def current() -> dict[str, object]:
        return dict(json.loads((await kv.get("edge-stats")).value or b"{}"))

    async with asyncio.timeout(5):
        while (stats := await current())["connections"] != 3:
            await asyncio.sleep(0.1)
    # 3 personal subjects and one channel
    assert stats["subscriptions"] == 4
    assert stats["accepting"] is True
    assert stats["draining"] is False
    assert edge.process is not None
    edge.process.kill()  # a dead edge stops writing; its entry expires with the TTL
    async with asyncio.timeout(15):
        while True:
            try:
                await kv.get("edge-stats")
            except nats.js.errors.KeyNotFoundError:
                break
            await asyncio.sleep(0.25)
    await nc.close()
