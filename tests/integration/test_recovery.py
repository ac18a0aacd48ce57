"""Recovery of any backlog the history keeps: replayed in batches as the client reads.

A `subscribe` with `since` used to be answered with the whole backlog at once,
which overflowed the 512 KiB outbox (closed 1013 above ~450 x 1 KiB). These
tests recover the full history at the largest message size, with live traffic
arriving meanwhile, through a client cut mid-recovery, and check that a client
which does not read is still evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from websockets.asyncio.client import connect

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client, Closed
from switchboard.client.resilient import ResilientClient
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import channel_cli, next_event, scrape_metrics, wait_for

HISTORY = 1000  # events kept per channel
DATA_BYTES = 60_000  # near the largest message an edge takes from a client (64 KiB)
BIG = f"""\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {{name: big}}
spec:
  history: {{size: {HISTORY}, ttl: 1h}}
  maxMessageBytes: 65536
"""


def payload(n: int) -> bytes:
    return json.dumps({"n": n, "pad": "x" * DATA_BYTES}).encode()


@pytest.fixture(scope="module")
async def backend(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    assert await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=BIG)
    nc = await nats.connect(nats_server.url)
    await asyncio.sleep(0.5)  # the edges have read the config
    yield nc
    await nc.close()
    await asyncio.to_thread(channel_cli, nats_server, "delete", "big")


async def fill(nc: NatsClient, subject: str, count: int, first: int = 0) -> list[int]:
    """Store `count` events on `subject`; their offsets."""
    js = nc.jetstream()
    return [(await js.publish(subject, payload(first + i))).seq for i in range(count)]


async def take(client: Client, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            msg = await client.next_message(timeout)
            if msg["type"] == "event":
                events.append(msg["payload"])
    return events


async def test_full_history_at_the_largest_size_recovers_in_order(
    backend: NatsClient, edge1: Edge
) -> None:
    """1 event up to the whole history (1000 x 60 KB, about 60 MB: 120 times the outbox)."""
    offsets = await fill(backend, "sb.ch.big.sweep", HISTORY)
    client = await Client.connect(edge1.ws_url, token=token("sweeper"))
    first = await client.subscribe("big:sweep")
    epoch = first["epoch"]
    assert first["offset"] == offsets[-1]
    for missed in (1, 10, 100, 600, HISTORY):
        since = offsets[-missed - 1] if missed < HISTORY else offsets[0] - 1
        await client.unsubscribe("big:sweep")
        started = time.monotonic()
        ack = await client.subscribe("big:sweep", since={"offset": since, "epoch": epoch})
        assert ack["recovered"] is True
        assert ack["offset"] == offsets[-1]
        events = await take(client, missed)
        took = time.monotonic() - started
        assert [e["offset"] for e in events] == offsets[-missed:]
        assert [e["data"]["n"] for e in events] == list(range(HISTORY - missed, HISTORY))
        assert all(len(e["data"]["pad"]) == DATA_BYTES for e in events)
        print(f"recovered {missed} x {DATA_BYTES} B in {took:.2f} s")
    # nothing more was queued: the next event is a new one
    (live,) = await fill(backend, "sb.ch.big.sweep", 1, first=HISTORY)
    assert (await take(client, 1))[0]["offset"] == live
    assert client.close_code is None
    await client.close()


async def test_live_events_during_a_long_recovery_arrive_once_in_order(
    backend: NatsClient, edge1: Edge, edge2: Edge
) -> None:
    """A backend keeps publishing while the client recovers: the replay runs on into
    what arrives meanwhile, then hands over to the live feed with no gap or repeat."""
    offsets = await fill(backend, "sb.ch.big.busy", 500)
    watcher = await Client.connect(edge2.ws_url, token=token("watcher"))  # keeps the topic
    await watcher.subscribe("big:busy")  # live on edge 2 all along
    client = await Client.connect(edge2.ws_url, token=token("late"))
    epoch = (await client.subscribe("big:busy"))["epoch"]
    await client.unsubscribe("big:busy")

    async def publish_live() -> list[int]:
        sent = []
        for i in range(100):
            sent += await fill(backend, "sb.ch.big.busy", 1, first=500 + i)
            await asyncio.sleep(0.01)
        return sent

    live = asyncio.create_task(publish_live())
    await asyncio.sleep(0.05)
    ack = await client.subscribe("big:busy", since={"offset": offsets[0] - 1, "epoch": epoch})
    assert ack["recovered"] is True
    sent = offsets + await live
    events = await take(client, len(sent))
    assert [e["offset"] for e in events] == sent
    assert [e["data"]["n"] for e in events] == list(range(600))
    watched = await take(watcher, 100)
    assert [e["offset"] for e in watched] == sent[500:]
    await client.close()
    await watcher.close()


async def test_a_client_cut_mid_recovery_comes_back_without_loss_or_repeat(
    backend: NatsClient, edge1: Edge, edge2: Edge
) -> None:
    offsets = await fill(backend, "sb.ch.big.cut", HISTORY)

    async def get_token() -> str:
        return token("cut")

    resilient = ResilientClient([edge1.ws_url, edge2.ws_url], get_token)
    await resilient.start()
    ack = await resilient.subscribe("big:cut")
    resilient.positions["big:cut"] = {"offset": offsets[0] - 1, "epoch": ack["epoch"]}
    first = resilient.client
    assert first is not None
    await first.unsubscribe("big:cut")
    await first.subscribe("big:cut", since=resilient.positions["big:cut"])
    got: list[dict[str, Any]] = []
    stream = resilient.events()
    async with asyncio.timeout(90):
        async for msg in stream:
            if msg["type"] != "event":
                continue
            got.append(msg["payload"])
            if len(got) == 300:
                first.ws.transport.abort()  # the network drops mid-recovery
            if len(got) == HISTORY:
                break
    assert resilient.connections == 2
    assert [e["offset"] for e in got] == offsets
    assert [e["data"]["n"] for e in got] == list(range(HISTORY))
    (live,) = await fill(backend, "sb.ch.big.cut", 1, first=HISTORY)
    async with asyncio.timeout(10):
        async for msg in stream:
            if msg["type"] == "event":
                assert msg["payload"]["offset"] == live
                break
    await resilient.close()


async def test_a_client_that_does_not_read_its_recovery_is_evicted(
    backend: NatsClient, edge1: Edge
) -> None:
    offsets = await fill(backend, "sb.ch.big.stuck", HISTORY)
    probe = await Client.connect(edge1.ws_url, token=token("stuck"))
    epoch = (await probe.subscribe("big:stuck"))["epoch"]
    await probe.close()
    request = {
        "type": "subscribe",
        "id": "1",
        "payload": {"channel": "big:stuck", "since": {"offset": offsets[0] - 1, "epoch": epoch}},
    }
    evicted_before = scrape_metrics(edge1).get("sb_edge_slow_consumer_evictions_total", 0)
    # max_queue=1: websockets stops reading the socket once one message waits unread
    async with connect(
        edge1.ws_url,
        subprotocols=["switchboard.v1", f"bearer.{token('stuck')}"],  # type: ignore[list-item]
        max_size=None,
        max_queue=1,
    ) as ws:
        await ws.send(json.dumps(request))
        started = time.monotonic()
        # grace 2 s once the socket buffers are full: a rule on progress, not a deadline
        await wait_for(
            lambda: (
                scrape_metrics(edge1).get("sb_edge_slow_consumer_evictions_total", 0)
                > evicted_before
            ),
            timeout=20,
            interval=0.25,
        )
        print(f"non-reading client evicted after {time.monotonic() - started:.2f} s")
        ws.transport.abort()
    # the edge is fine and the history still recovers for a client that reads
    client = await Client.connect(edge1.ws_url, token=token("reader"))
    ack = await client.subscribe("big:stuck", since={"offset": offsets[-11], "epoch": epoch})
    assert ack["recovered"] is True
    assert [e["offset"] for e in await take(client, 10)] == offsets[-10:]
    await client.close()
    with pytest.raises(Closed):
        await probe.next_message(0.1)


async def test_a_drain_mid_recovery_resumes_from_what_was_replayed(
    backend: NatsClient, edge_factory: EdgeFactory, edge2: Edge
) -> None:
    """The resume token of a connection still recovering carries the offset its replay
    reached, not the channel's newest: the next edge replays the rest."""
    doomed = edge_factory.start("edge-recovering", reconnect_jitter_ms="100")
    offsets = await fill(backend, "sb.ch.big.moving", HISTORY)

    async def get_token() -> str:
        return token("mover")

    resilient = ResilientClient([doomed.ws_url, edge2.ws_url], get_token)
    await resilient.start()
    first = resilient.client
    assert first is not None
    ack = await first.subscribe("big:moving", since={"offset": offsets[0] - 1, "epoch": ""})
    resilient.channels.append("big:moving")
    resilient.positions["big:moving"] = {"offset": offsets[0] - 1, "epoch": ack["epoch"]}
    await first.unsubscribe("big:moving")
    await first.subscribe("big:moving", since=resilient.positions["big:moving"])
    got: list[int] = []
    async with asyncio.timeout(90):
        async for msg in resilient.events():
            if msg["type"] != "event":
                continue
            got.append(msg["payload"]["offset"])
            if len(got) == 200:
                assert doomed.process is not None
                doomed.process.terminate()  # SIGTERM: the edge drains
            if len(got) == HISTORY:
                break
    assert resilient.resumed == 1
    assert got == offsets
    await resilient.close()
    doomed.stop()


LIVE_EDGE = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: liveedge}
spec:
  history: {size: 10000, ttl: 10m}
"""


async def following_nothing(edge: Edge) -> None:
    async with asyncio.timeout(5):
        while (await asyncio.to_thread(scrape_metrics, edge))["sb_edge_subscriptions"]:
            await asyncio.sleep(0.01)


async def test_recovering_at_the_live_edge_on_an_edge_new_to_the_channel_loses_nothing(
    nats_server: NatsServer, edge_factory: EdgeFactory
) -> None:
    """A client back from a drain lands, alone, on an edge that then starts to follow
    the channel, with `since` at the newest event, and events are stored while it
    subscribes: the replay ends at once and the live feed takes over. Repeated, at
    varied timings, because the hole this once had (an event stored while the
    edge's consumer was being made, dropped before the hand-over) needs an event
    to land in a window of a millisecond or two."""
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=LIVE_EDGE)
    await asyncio.sleep(0.5)  # the edges have read the config
    edge = edge_factory.start("live-edge")
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    rng = random.Random(7)
    try:
        newest = (await js.publish("sb.ch.liveedge.x", b'{"n": 0}')).seq
        probe = await Client.connect(edge.ws_url, token=token("prober"))
        epoch = (await probe.subscribe("liveedge:x"))["epoch"]
        await probe.close()
        holes: list[dict[str, Any]] = []
        for attempt in range(200):
            client = await Client.connect(edge.ws_url, token=token(f"back-{attempt}"))
            since = newest
            subscribing = asyncio.create_task(
                client.subscribe("liveedge:x", since={"offset": since, "epoch": epoch})
            )
            delay = rng.uniform(0, 0.006)
            await asyncio.sleep(delay)
            for n in range(3):  # stored before, while or after the edge subscribes
                newest = (await js.publish("sb.ch.liveedge.x", b'{"n": %d}' % n)).seq
            assert (await subscribing)["recovered"] is True
            offsets: list[int] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    while not offsets or offsets[-1] < newest:
                        offsets.append((await next_event(client))["payload"]["offset"])
            if offsets != list(range(since + 1, newest + 1)):
                ms = round(delay * 1000, 2)
                holes.append({"attempt": attempt, "ms": ms, "since": since, "got": offsets})
            await client.close()
            await following_nothing(edge)  # so the next client makes it follow anew
        assert holes == []
    finally:
        await nc.close()
