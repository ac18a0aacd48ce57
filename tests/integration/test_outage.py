"""NATS killed and restarted: the edge keeps clients, acks nothing while down, resubscribes."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from switchboard.client import Client, SwitchboardError
from switchboard.natsserver import NatsServer
from tests.conftest import EdgeFactory, token
from tests.integration.helpers import next_event, wait_for


@pytest.fixture
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=str(tmp_path_factory.mktemp("nats-outage"))).start()
    yield server
    server.stop()


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz") as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


async def test_nats_outage_and_recovery(
    own_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    factory = EdgeFactory(own_nats, str(tmp_path_factory.mktemp("outage-edges")))
    edge = factory.start("edge-outage")
    try:
        sub = await Client.connect(edge.ws_url, token=token("bob"))
        pub = await Client.connect(edge.ws_url, token=token("alice"))
        await sub.subscribe("outage:room")
        await pub.publish("outage:room", "before")
        assert (await next_event(sub))["payload"]["data"] == "before"

        own_nats.stop(keep_store=True)
        await wait_for(lambda: not ready(edge.http_url), timeout=10)
        with pytest.raises(SwitchboardError) as refused:
            await pub.publish("outage:room", "while down")
        assert refused.value.code == "unavailable"
        assert refused.value.retryable
        with pytest.raises(SwitchboardError) as rpc_refused:
            await pub.rpc("any.method", None)
        assert rpc_refused.value.code == "unavailable"
        await asyncio.sleep(3)

        own_nats.start()  # same port, same store
        await wait_for(lambda: ready(edge.http_url), timeout=20)
        gaps = [await sub.next_message(), await sub.next_message()]
        assert {g["type"] for g in gaps} == {"gap"}
        assert {g["payload"]["channel"] for g in gaps} == {"outage:room", "#bob"}
        assert all(g["payload"]["until_ts"] - g["payload"]["since_ts"] >= 3000 for g in gaps)
        await pub.publish("outage:room", "after")
        event = await next_event(sub)
        assert event["payload"]["data"] == "after"  # never "while down": it was not acked
        assert sub.close_code is None
        assert pub.close_code is None
        await sub.close()
        await pub.close()
    finally:
        factory.stop_all()
