"""The Python client follows the close-code table by itself (DESIGN §4)."""

from __future__ import annotations

import asyncio

from switchboard.client import Client
from switchboard.resilient import ResilientClient
from tests.conftest import Edge, EdgeFactory, token


async def next_data(client: ResilientClient, timeout: float = 10) -> object:
    async with asyncio.timeout(timeout):
        async for msg in client.events():
            if msg["type"] == "event":
                return msg["payload"]["data"]
    raise AssertionError("event stream ended")


async def test_drained_client_moves_to_another_edge_and_resubscribes(
    edge_factory: EdgeFactory, edge2: Edge
) -> None:
    doomed = edge_factory.start("edge-moving", reconnect_jitter_ms="200")

    async def alice() -> str:
        return token("alice")

    client = ResilientClient([doomed.ws_url, edge2.ws_url], alice)
    await client.start()
    await client.subscribe("moving:room")
    assert client.client is not None
    assert client.client.welcome["node"] == "edge-moving"
    publisher = await Client.connect(edge2.ws_url, token=token("bob"))
    await publisher.publish("moving:room", "before")
    assert await next_data(client) == "before"

    assert doomed.process is not None
    doomed.process.terminate()
    kinds = []
    async with asyncio.timeout(10):
        async for msg in client.events():
            kinds.append(msg["type"])
            if msg["type"] == "reconnect":
                break
    assert kinds[-1] == "reconnect"
    async with asyncio.timeout(10):
        while client.connections < 2:
            await asyncio.sleep(0.02)
    assert client.client.welcome["node"] == "edge-2"
    await publisher.publish("moving:room", "after")  # it is subscribed again, on edge-2
    assert await next_data(client) == "after"
    await publisher.close()
    await client.close()


async def test_expired_token_is_replaced_and_the_client_reconnects(edge2: Edge) -> None:
    minted = []

    async def short_lived() -> str:
        minted.append(1)
        return token("carol", ttl_s=1.5)

    client = ResilientClient([edge2.ws_url], short_lived)
    await client.start()
    await client.subscribe("refresh:room")
    async with asyncio.timeout(15):
        while client.connections < 2:  # closed 4001 at expiry, then back with a new token
            await asyncio.sleep(0.05)
    assert len(minted) >= 2
    await client.close()
