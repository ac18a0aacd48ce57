"""Shed (`{"command": "shed", ...}` on `sb.edge.<pod>.ctl`): a real edge moves N of its
connections as a drain would, newest first and RPCs in flight last, while it stays
Ready and keeps accepting; a client it moved is taken by a pod that is not shedding
only, and resumes there with its subscriptions."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from websockets.exceptions import InvalidStatus

from switchboard.client import Client
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import scrape_metrics


def readyz(edge: Edge) -> int:
    try:
        with urllib.request.urlopen(f"{edge.admin_url}/readyz") as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


async def command(nc: Any, pod: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await nc.request(f"sb.edge.{pod}.ctl", json.dumps(body).encode(), timeout=5)
    return dict(json.loads(reply.data))


def shed(connections: int, rate: float, seq: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "command": "shed",
        "connections": connections,
        "reconnects_per_second": rate,
    }
    if seq is not None:
        body["seq"] = seq
    return body


async def stats_of(nc: Any, pod: str) -> dict[str, Any]:
    kv = await nc.jetstream().key_value("sb_edges")
    return dict(json.loads((await kv.get(pod)).value))


async def test_shed_moves_the_newest_at_the_pace_and_keeps_serving(
    edge_factory: EdgeFactory,
) -> None:
    edge = edge_factory.start("edge-shed", reconnect_jitter_ms="0", stats_interval_s="0.2")
    nc = await nats.connect(edge_factory.nats.url_for("operator"))  # playing the operator
    clients = []
    for i in range(12):
        clients.append(await Client.connect(edge.ws_url, token=token(f"s{i}")))
        await clients[-1].subscribe(f"shed:{i}")
    closed_at: dict[int, float] = {}

    async def watch(index: int, client: Client) -> None:
        if await client.wait_closed(timeout=30) is not None:
            closed_at[index] = time.monotonic()

    watchers = [asyncio.create_task(watch(i, c)) for i, c in enumerate(clients)]
    started = time.monotonic()
    assert await command(nc, "edge-shed", shed(5, 10, seq=1)) == {"ok": True, "connections": 5}
    # still Ready and accepting while it sheds
    assert await asyncio.to_thread(readyz, edge) == 200
    newcomer = await Client.connect(edge.ws_url, token=token("newcomer"))
    async with asyncio.timeout(5):
        while not (await stats_of(nc, "edge-shed"))["shedding"]:
            await asyncio.sleep(0.05)
    async with asyncio.timeout(10):
        while len(closed_at) < 5:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # nobody else goes
    assert sorted(closed_at) == [7, 8, 9, 10, 11]  # the five newest (the newcomer came later)
    for index in closed_at:
        reconnect = (await clients[index].next_message())["payload"]
        assert (reconnect["after_ms"], reconnect["reason"]) == (0, "rebalance")
        assert clients[index].close_code == 1001
    times = sorted(closed_at.values())
    # 5 moves at 10/s, the first one interval in: ~0.5 s to the last, not all at once
    assert times[-1] - started >= 0.45
    assert times[-1] - times[0] >= 0.35
    assert await newcomer.publish("shed:x", {"still": "serving"}) is not None
    assert await asyncio.to_thread(readyz, edge) == 200
    # its stats settle once the moved clients could all be back (jitter 0 + 1 s)
    async with asyncio.timeout(5):
        while (stats := await stats_of(nc, "edge-shed"))["shedding"]:
            await asyncio.sleep(0.05)
    assert stats["connections"] == 8 and stats["shed_pending"] == 0
    for client in [*clients, newcomer]:
        await client.close()
    await asyncio.gather(*watchers)
    await nc.close()


async def test_a_client_with_an_rpc_in_flight_goes_last(edge_factory: EdgeFactory) -> None:
    edge = edge_factory.start("edge-shed-rpc", reconnect_jitter_ms="0")
    nc = await nats.connect(edge_factory.nats.url_for("operator"))
    backend = await nats.connect(edge_factory.nats.url)  # a backend that answers late
    asked = asyncio.Event()

    async def slow(msg: Msg) -> None:
        asked.set()
        await asyncio.sleep(3)
        await msg.respond(b'{"late": true}')

    await backend.subscribe("sb.rpc.slow", cb=slow)
    await backend.flush()
    older = await Client.connect(edge.ws_url, token=token("older"))
    newest = await Client.connect(edge.ws_url, token=token("newest"))
    rpc = asyncio.create_task(newest.rpc("slow", {}, timeout_ms=10000))
    await asyncio.wait_for(asked.wait(), 5)
    assert await command(nc, "edge-shed-rpc", shed(1, 50)) == {"ok": True, "connections": 1}
    assert await older.wait_closed(timeout=5) == 1001
    assert await rpc == {"late": True}  # the newest, busy with an RPC, was spared
    assert newest.close_code is None
    await newest.close()
    await backend.close()
    await nc.close()


async def test_moved_clients_land_only_on_pods_not_shedding(edge_factory: EdgeFactory) -> None:
    """The Service may send a moved client back to a shedding pod: that pod refuses its
    resume token (503, retry), and a pod that is not shedding takes it and restores its
    subscriptions from the token's offsets. Plain new connections are never refused."""
    hot = edge_factory.start("edge-hot", reconnect_jitter_ms="0")
    cold = edge_factory.start("edge-cold", reconnect_jitter_ms="0")
    nc = await nats.connect(edge_factory.nats.url_for("operator"))
    stay = await Client.connect(hot.ws_url, token=token("stay"))
    mover = await Client.connect(hot.ws_url, token=token("mover"))
    await mover.subscribe("moving:room")
    # A long shed at 1/s: the mover (newest) goes first, the edge then keeps shedding.
    assert (await command(nc, "edge-hot", shed(2, 1)))["ok"]
    reconnect = (await mover.next_message(5))["payload"]
    assert reconnect["reason"] == "rebalance"
    assert await mover.wait_closed(5) == 1001
    with pytest.raises(InvalidStatus) as refused:
        await Client.connect(hot.ws_url, resume=reconnect["resume_token"])
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers["Retry-After"] == "1"
    newcomer = await Client.connect(hot.ws_url, token=token("new"))  # not a moved client
    moved = await Client.connect(cold.ws_url, resume=reconnect["resume_token"])
    restored = await moved.next_message(5)
    assert (restored["type"], restored["id"]) == ("ack", "resume:moving:room")
    # A drain's resume token is no shed's: a shedding pod takes it.
    assert await command(nc, "edge-cold", {"command": "drain"}) == {"ok": True, "connections": 1}
    drained = (await moved.next_message(5))["payload"]
    assert drained["reason"] == "operator"
    back = await Client.connect(hot.ws_url, resume=drained["resume_token"])
    assert (await back.next_message(5))["id"] == "resume:moving:room"
    # Stopping the shed (connections 0) leaves the rest where they are.
    assert await command(nc, "edge-hot", shed(0, 1)) == {"ok": True, "connections": 0}
    await asyncio.sleep(1.5)
    assert stay.close_code is None and newcomer.close_code is None
    for client in (stay, newcomer, back):
        await client.close()
    await nc.close()


async def test_shed_while_draining_and_stale_sheds_are_refused_quietly(
    edge_factory: EdgeFactory,
) -> None:
    edge = edge_factory.start("edge-shed-seq", reconnect_jitter_ms="0")
    nc = await nats.connect(edge_factory.nats.url_for("operator"))
    clients = [await Client.connect(edge.ws_url, token=token(f"q{i}")) for i in range(3)]
    assert await command(nc, "edge-shed-seq", shed(1, 0.5, seq=20)) == {
        "ok": True,
        "connections": 1,
    }
    stale = await command(nc, "edge-shed-seq", shed(3, 100, seq=10))
    assert stale["ok"] is False and "seq" in stale["error"]
    # more than it has: it moves what it has (2 left after the first)
    assert await command(nc, "edge-shed-seq", shed(50, 100, seq=30)) == {
        "ok": True,
        "connections": 3,
    }
    assert [await c.wait_closed(5) for c in clients] == [1001] * 3
    edge2 = await Client.connect(edge.ws_url, token=token("late"))
    await command(nc, "edge-shed-seq", {"command": "drain"})
    assert await edge2.wait_closed(5) == 1001
    draining = await command(nc, "edge-shed-seq", shed(1, 1, seq=40))
    assert draining == {"ok": False, "error": "shed refused: the edge is draining"}
    counted = await asyncio.to_thread(scrape_metrics, edge)
    assert counted["sb_edge_control_refused_total"] == 0  # races, not faults
    await nc.close()
