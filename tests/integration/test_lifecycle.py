"""Edge process lifecycle: SIGTERM tells clients to reconnect and closes with 1001."""

from __future__ import annotations

import asyncio

from switchboard.client import Client
from tests.conftest import EdgeFactory, token


async def test_sigterm_sends_reconnect_then_1001(edge_factory: EdgeFactory) -> None:
    edge = edge_factory.start("edge-term", reconnect_jitter_ms="300")
    clients = await asyncio.gather(
        *(Client.connect(edge.ws_url, token=token(f"u{i}")) for i in range(20))
    )
    assert edge.process is not None
    edge.process.terminate()
    for client in clients:
        msg = await client.next_message()
        assert msg["type"] == "reconnect"
        assert msg["payload"]["reason"] == "shutdown"
        assert 0 <= msg["payload"]["after_ms"] <= 300
        assert await client.wait_closed() == 1001
    assert await asyncio.to_thread(edge.process.wait, 20) == 0


async def test_expired_token_closes_4001(edge_factory: EdgeFactory) -> None:
    edge = edge_factory.start("edge-exp", jwt_leeway_s="0")
    client = await Client.connect(edge.ws_url, token=token("alice", ttl_s=1.5))
    assert await client.wait_closed(timeout=10) == 4001
    refreshed = await Client.connect(edge.ws_url, token=token("alice", ttl_s=1.5))
    await refreshed.refresh(token("alice", ttl_s=60))
    await asyncio.sleep(2.5)
    assert refreshed.close_code is None
    await refreshed.close()
