"""Overload answers: a peer that never reads is evicted with 1013; others are unaffected."""

from __future__ import annotations

import asyncio
import json
import time

import nats
from websockets.asyncio.client import connect

from switchboard.client import Client
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import next_event, scrape_metrics


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


IN_FLIGHT = 1000  # messages (about 1 MB): what loopback socket buffers hold


async def caught_up(received: list[int], count: int) -> None:
    while len(received) < count:
        await asyncio.sleep(0.005)


async def firehose(
    edge: Edge, nats_url: str, healthy: Client, total: int, *, first: int = 0
) -> float | None:
    """Publish `total` 1 KiB messages; the healthy client must get all, in order.

    Returns when the first eviction showed in /metrics (seconds after the start).
    """
    body = json.dumps("x" * 1000).encode()
    nc = await nats.connect(nats_url)
    received: list[int] = []

    async def consume() -> None:
        while len(received) < total:
            event = await next_event(healthy, timeout=20)
            received.append(int(event["payload"]["from"]))

    consumer = asyncio.create_task(consume())
    started = time.monotonic()
    evicted_after: float | None = None
    evictions_before = (await scrape(edge))[EVICTIONS]
    for i in range(first, first + total):
        await nc.publish("sb.ch.firehose", body, headers={"Sb-From": str(i)})
        if i % 500 == 499:
            await nc.flush()
            # A healthy client is one that keeps up: the publisher stays at most
            # IN_FLIGHT messages ahead of what it has read, whatever the machine's load.
            await asyncio.wait_for(caught_up(received, i - first + 1 - IN_FLIGHT), 20)
        look = i % 2000 == 1999 and evicted_after is None
        if look and (await scrape(edge))[EVICTIONS] > evictions_before:
            evicted_after = time.monotonic() - started
    await nc.flush()
    await asyncio.wait_for(consumer, 60)
    assert received == list(range(first, first + total))  # 100 %, in order
    await nc.close()
    return evicted_after


async def test_reader_that_never_reads_is_evicted_and_healthy_client_gets_all(
    edge_factory: EdgeFactory,
) -> None:
    edge = edge_factory.start("edge-slow", rate_per_s="100000", rate_burst="100000")
    assert edge.process is not None
    healthy = await Client.connect(edge.ws_url, token=token("healthy"))
    await healthy.subscribe("firehose")
    # Warm-up round without the stalled peer: the edge's allocator reaches its
    # working size for this traffic, so the second round's growth is the peer's.
    assert await firehose(edge, edge_factory.nats.url, healthy, 100_000) is None
    rss_warm = rss_kib(edge.process.pid)

    # The stalled peer: after subscribing it never reads again; max_queue=1 makes its
    # client library stop reading the socket, so TCP backpressure reaches the edge.
    stalled = await connect(
        edge.ws_url,
        subprotocols=["switchboard.v1", f"bearer.{token('stalled')}"],  # type: ignore[list-item]
        max_queue=1,
    )
    await stalled.recv()
    await stalled.send(
        json.dumps({"type": "subscribe", "id": "1", "payload": {"channel": "firehose"}})
    )
    await stalled.recv()
    evicted_after = await firehose(edge, edge_factory.nats.url, healthy, 100_000, first=100_000)
    assert evicted_after is not None
    assert evicted_after < 3.0
    metrics = await scrape(edge)
    assert metrics[EVICTIONS] == 1
    assert metrics['sb_edge_closes_total{code="1013"}'] == 1
    growth = rss_kib(edge.process.pid) - rss_warm
    print(f"evicted after {evicted_after:.2f}s; RSS growth for the stalled peer {growth} KiB")
    assert growth <= 1024
    await healthy.close()
    stalled.transport.abort()


EVICTIONS = "sb_edge_slow_consumer_evictions_total"


async def scrape(edge: Edge) -> dict[str, float]:
    return await asyncio.to_thread(scrape_metrics, edge)
