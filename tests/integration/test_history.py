"""Channels with history: stored in JetStream, offsets and epoch on acks and events,
`msg_id` de-duplicated."""

from __future__ import annotations

import asyncio

import nats
import pytest
from websockets.exceptions import InvalidStatus

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client
from switchboard.client.resilient import ResilientClient
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import channel_cli, next_event

HIST = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: hist}
spec:
  history: {size: 50, ttl: 10m}
"""


async def test_history_channel_offsets_epoch_and_idempotent_publish(
    nats_server: NatsServer, edge1: Edge, edge2: Edge
) -> None:
    assert await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=HIST)
    nc = await nats.connect(nats_server.url)  # a backend
    ops = await nats.connect(nats_server.url_for("operator"))  # the test's eyes on the stream
    info = await ops.jetstream().stream_info("SB_CH_hist")
    assert info.config.max_msgs_per_subject == 50
    assert info.config.max_age == 600
    await asyncio.sleep(0.5)  # both edges have read the config

    sub = await Client.connect(edge2.ws_url, token=token("bob"))
    pub = await Client.connect(edge1.ws_url, token=token("alice"))
    first = await sub.subscribe("hist:room")
    assert first["offset"] == 0  # nothing stored yet on this channel
    assert first["epoch"]

    acks = [await pub.publish("hist:room", {"n": i}) for i in range(3)]
    offsets = [ack["offset"] for ack in acks]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 3
    assert {ack["epoch"] for ack in acks} == {first["epoch"]}
    for i in range(3):
        event = (await next_event(sub))["payload"]
        assert (event["data"], event["offset"], event["epoch"]) == (
            {"n": i},
            offsets[i],
            first["epoch"],
        )

    # the same msg_id twice: acked both times with one offset, delivered once
    once = await pub.publish("hist:room", "only once", msg_id="order-42")
    again = await pub.publish("hist:room", "only once", msg_id="order-42")
    assert once["offset"] == again["offset"]
    assert (await next_event(sub))["payload"]["offset"] == once["offset"]
    await pub.publish("hist:room", "next")
    assert (await next_event(sub))["payload"]["data"] == "next"  # not the duplicate

    # a backend publishing on core NATS lands in the history too
    await nc.publish("sb.ch.hist.room", b'"from backend"')
    event = (await next_event(sub))["payload"]
    assert event["data"] == "from backend"
    assert event["offset"] > once["offset"]
    late = await Client.connect(edge1.ws_url, token=token("carol"))
    assert (await late.subscribe("hist:room"))["offset"] == event["offset"]

    for client in (sub, pub, late):
        await client.close()
    await asyncio.to_thread(channel_cli, nats_server, "delete", "hist")
    await nc.close()
    await ops.close()


async def test_subscribe_since_recovers_what_was_missed_without_gap_or_duplicate(
    nats_server: NatsServer, edge1: Edge, edge2: Edge
) -> None:
    manifest = HIST.replace("name: hist", "name: rec")
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=manifest)
    await asyncio.sleep(0.5)
    pub = await Client.connect(edge1.ws_url, token=token("alice"))
    sub = await Client.connect(edge2.ws_url, token=token("bob"))
    start = await sub.subscribe("rec:room")
    for i in range(5):
        await pub.publish("rec:room", i)
    seen = [(await next_event(sub))["payload"] for _ in range(5)]
    position = {"offset": seen[2]["offset"], "epoch": start["epoch"]}  # it missed 3 and 4
    await sub.close()

    # meanwhile more is published, and more keeps coming while it recovers
    for i in range(5, 8):
        await pub.publish("rec:room", i)
    back = await Client.connect(edge1.ws_url, token=token("bob"))
    live = asyncio.create_task(_publish_range(pub, range(8, 40)))
    ack = await back.subscribe("rec:room", since=position)
    assert ack["recovered"] is True
    assert ack["epoch"] == start["epoch"]
    await live
    got = [(await next_event(back))["payload"]["data"] for _ in range(40 - 3)]
    assert got == list(range(3, 40))  # no gap, no duplicate, in order
    with pytest.raises(TimeoutError):
        await next_event(back, timeout=0.3)

    # another epoch, or a position older than what is kept: told, never silently skipped
    small = HIST.replace("name: hist", "name: tiny").replace("size: 50", "size: 3")
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=small)
    await asyncio.sleep(0.5)
    tiny = await back.subscribe("tiny:x")
    oldest = await pub.publish("tiny:x", "first")
    for n in range(5):
        await pub.publish("tiny:x", n)  # only the last 3 are kept
    gone = await back.subscribe(
        "tiny:x", since={"offset": oldest["offset"] - 1, "epoch": tiny["epoch"]}
    )
    assert gone["recovered"] is False
    await asyncio.to_thread(channel_cli, nats_server, "delete", "tiny")
    other = await back.subscribe("rec:lobby", since={"offset": 1, "epoch": "1999-01-01"})
    assert other["recovered"] is False
    assert other["offset"] == 0
    for client in (pub, back):
        await client.close()
    await asyncio.to_thread(channel_cli, nats_server, "delete", "rec")


async def _publish_range(client: Client, numbers: range) -> None:
    for n in numbers:
        await client.publish("rec:room", n)


async def test_recreated_stream_means_recovered_false(nats_server: NatsServer, edge1: Edge) -> None:
    manifest = HIST.replace("name: hist", "name: again")
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=manifest)
    await asyncio.sleep(0.5)
    client = await Client.connect(edge1.ws_url, token=token("erin"))
    first = await client.subscribe("again:x")
    ack = await client.publish("again:x", "kept")
    position = {"offset": ack["offset"], "epoch": first["epoch"]}
    await client.unsubscribe("again:x")
    # history lost: the stream is recreated (as only the operator may)
    nc = await nats.connect(nats_server.url_for("operator"))
    await nc.jetstream().delete_stream("SB_CH_again")
    await asyncio.sleep(0.01)
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=manifest)
    answer = await client.subscribe("again:x", since=position)
    assert answer["recovered"] is False
    assert answer["epoch"] != first["epoch"]
    await client.close()
    await nc.close()
    await asyncio.to_thread(channel_cli, nats_server, "delete", "again")


async def test_drained_subscriber_resumes_on_another_edge_with_nothing_lost(
    nats_server: NatsServer, edge_factory: EdgeFactory, edge2: Edge
) -> None:
    """2,000 messages at 200/s; the subscriber's edge gets SIGTERM midway."""
    manifest = HIST.replace("name: hist", "name: flow").replace("size: 50", "size: 5000")
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=manifest)
    doomed = edge_factory.start("edge-flow", reconnect_jitter_ms="500")
    await asyncio.sleep(0.5)

    async def dana() -> str:
        return token("dana")

    subscriber = ResilientClient([doomed.ws_url, edge2.ws_url], dana)
    await subscriber.start()
    await subscriber.subscribe("flow:room")
    # a backend publishes (over the 100/s a client may send); it is stored all the same
    publisher = await nats.connect(nats_server.url)
    received: list[int] = []

    async def publish_all() -> None:
        for i in range(2000):
            await publisher.publish("sb.ch.flow.room", str(i).encode())
            if i == 1000:
                assert doomed.process is not None
                doomed.process.terminate()  # the subscriber's edge drains midway
            await asyncio.sleep(1 / 200)

    async def receive_all() -> None:
        async for msg in subscriber.events():
            if msg["type"] == "event":
                received.append(msg["payload"]["data"])
                if len(received) == 2000:
                    return

    await asyncio.wait_for(asyncio.gather(publish_all(), receive_all()), 60)
    assert received == list(range(2000))  # all, exactly once, in order
    assert subscriber.connections == 2
    assert subscriber.resumed == 1  # with the drain's resume token
    assert [r["recovered"] for r in subscriber.recoveries] == [True]
    await subscriber.close()
    await publisher.close()
    await asyncio.to_thread(channel_cli, nats_server, "delete", "flow")


async def test_cut_connection_recovers_the_missed_messages(
    nats_server: NatsServer, edge2: Edge
) -> None:
    manifest = HIST.replace("name: hist", "name: cut")
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=manifest)
    await asyncio.sleep(0.5)

    async def eve() -> str:
        return token("eve")

    async def five_second_outage(delay: float) -> None:
        await asyncio.sleep(max(delay, 5.0))  # the network stays down for 5 s

    subscriber = ResilientClient([edge2.ws_url], eve, sleep=five_second_outage)
    await subscriber.start()
    await subscriber.subscribe("cut:room")
    publisher = await Client.connect(edge2.ws_url, token=token("pat"))
    assert subscriber.client is not None
    subscriber.client.ws.transport.abort()  # the network goes away (no close frame)
    cut = asyncio.get_running_loop().time()
    for i in range(40):  # published during the 5 s the client is away (history keeps 50)
        await publisher.publish("cut:room", i)
        await asyncio.sleep(0.1)
    got = []
    async with asyncio.timeout(30):
        async for msg in subscriber.events():
            if msg["type"] == "event":
                got.append(msg["payload"]["data"])
                if len(got) == 40:
                    break
    assert asyncio.get_running_loop().time() - cut >= 5.0
    assert got == list(range(40))
    assert [r["recovered"] for r in subscriber.recoveries] == [True]
    await subscriber.close()
    await publisher.close()
    await asyncio.to_thread(channel_cli, nats_server, "delete", "cut")


async def test_resume_token_restores_subscriptions_on_another_edge(
    nats_server: NatsServer, edge_factory: EdgeFactory, edge2: Edge
) -> None:
    manifest = HIST.replace("name: hist", "name: res")
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=manifest)
    doomed = edge_factory.start("edge-resume", reconnect_jitter_ms="0")
    await asyncio.sleep(0.5)
    client = await Client.connect(doomed.ws_url, token=token("fay", roles=["vip"]))
    await client.subscribe("res:room")
    await client.subscribe("plain:room")
    nc = await nats.connect(nats_server.url)
    for i in range(3):
        await nc.publish("sb.ch.res.room", str(i).encode())
    assert [(await next_event(client))["payload"]["data"] for _ in range(3)] == [0, 1, 2]

    assert doomed.process is not None
    doomed.process.terminate()
    reconnect = await client.next_message()
    assert reconnect["type"] == "reconnect"
    assert await client.wait_closed() == 1001
    for i in range(3, 6):  # published while the client is away
        await nc.publish("sb.ch.res.room", str(i).encode())

    back = await Client.connect(edge2.ws_url, resume=reconnect["payload"]["resume_token"])
    assert back.welcome["user"] == "fay"
    acks: dict[str, dict[str, object]] = {}
    events: list[object] = []
    while len(acks) < 2 or len(events) < 3:
        msg = await back.next_message()
        if msg["type"] == "ack":
            acks[msg["id"]] = msg["payload"]
        elif msg["type"] == "event":
            events.append(msg["payload"]["data"])
    assert acks["resume:res:room"]["recovered"] is True
    assert acks["resume:plain:room"]["channel"] == "plain:room"
    assert events == [3, 4, 5]  # what it missed, nothing twice
    await back.close()

    # a resume token is no bearer token, and a forged one is refused before the upgrade
    with pytest.raises(InvalidStatus) as forged:
        await Client.connect(edge2.ws_url, resume=reconnect["payload"]["resume_token"] + "x")
    assert forged.value.response.status_code == 401
    await nc.close()
    await asyncio.to_thread(channel_cli, nats_server, "delete", "res")
