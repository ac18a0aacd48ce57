"""The Python client follows the close-code table by itself (DESIGN §4)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable

import nats
import pytest

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client
from switchboard.client.resilient import ResilientClient, Stopped
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import channel_cli


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


HIST = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: keep}
spec:
  history: {size: 1000, ttl: 10m}
"""


async def test_a_failed_resubscription_is_retried_until_it_succeeds(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """NATS down: the re-subscription after a dropped connection is answered
    `unavailable`. The client backs off and tries again until NATS is back; then it
    has every event exactly once."""
    nats_server = NatsServer(
        store_dir=str(tmp_path_factory.mktemp("nats-resub")), auth=True
    ).start()
    factory = EdgeFactory(nats_server, str(tmp_path_factory.mktemp("resub-edges")))
    try:
        edge = factory.start("edge-resub")
        assert await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=HIST)
        await asyncio.sleep(0.5)

        async def dave() -> str:
            return token("dave")

        client = ResilientClient([edge.ws_url], dave)
        await client.start()
        await client.subscribe("keep:room")
        backend = await nats.connect(nats_server.url, max_reconnect_attempts=-1)
        js = backend.jetstream()
        sent = [(await js.publish("sb.ch.keep.room", b'"before"')).seq]
        assert await next_data(client) == "before"

        nats_server.stop(keep_store=True)
        assert client.client is not None
        client.client.ws.transport.abort()  # and the network drops
        async with asyncio.timeout(15):
            while "unavailable" not in " ".join(client.failures):
                await asyncio.sleep(0.05)
        assert client.stopped_with is None
        assert client._runner is not None and not client._runner.done()
        nats_server.start()
        async with asyncio.timeout(20):
            while not client._connected.is_set():
                await asyncio.sleep(0.05)
        sent += [
            (await js.publish("sb.ch.keep.room", f'"after {i}"'.encode())).seq for i in range(3)
        ]
        got = []
        async with asyncio.timeout(10):
            async for msg in client.events():
                if msg["type"] == "event":
                    got.append(msg["payload"]["offset"])
                    if len(got) == 3:
                        break
        assert got == sent[1:]
        await client.close()
        await backend.close()
    finally:
        factory.stop_all()
        nats_server.stop()


async def test_a_do_not_reconnect_close_stops_the_client_and_says_why(edge2: Edge) -> None:
    async def erin() -> str:
        return token("erin")

    client = ResilientClient([edge2.ws_url], erin)
    await client.start()
    await client.subscribe("big:frames")
    assert client.client is not None
    await client.client.send_raw("x" * 70_000)  # over the edge's 64 KiB frame limit: 1009
    async with asyncio.timeout(10):
        async for _ in client.events():
            pass  # the stream ends when the client stops
    assert client.stopped_with == 1009
    assert client.stop_reason
    with pytest.raises(Stopped):
        await client.publish("big:frames", "anything")
    await client.close()  # does not raise
    await client.close()


async def test_a_refused_edge_is_skipped_and_the_next_url_used(
    edge_factory: EdgeFactory, edge2: Edge
) -> None:
    full = edge_factory.start("edge-full", max_connections="1")
    hog = await Client.connect(full.ws_url, token=token("hog"))

    async def frank() -> str:
        return token("frank")

    client = ResilientClient([full.ws_url, edge2.ws_url], frank, rng=random.Random(1))
    await client.start()
    assert client.client is not None
    assert client.client.welcome["node"] == "edge-2"
    assert client.failures and "503" in client.failures[0]
    await client.close()
    await hog.close()
    full.stop()


def recording_sleep(waits: list[float]) -> Callable[[float], Awaitable[None]]:
    """The client's sleep, keeping each delay it chose."""

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    return sleep


async def grace_token() -> str:
    return token("grace")


@pytest.mark.parametrize("in_band", ["never", "always"])
async def test_the_edges_retry_after_is_the_delay_before_the_next_attempt(
    edge_factory: EdgeFactory, in_band: str
) -> None:
    """An edge over its new-connection rate refuses with 429 + `Retry-After: 1` (or, in
    band, 1013 `retry after 1000`): a client with that one URL waits that, stretched
    by U(1, 1.5), not the first backoff step (at most 0.5 s), then gets in."""
    limited = edge_factory.start(
        f"edge-limited-{in_band}",
        in_band_refusals=in_band,
        new_connections_per_s="1",
        new_connections_burst="1",
    )
    first = await Client.connect(limited.ws_url, token=token("first"))  # takes the burst
    waits: list[float] = []
    sleep = recording_sleep(waits)

    loop = asyncio.get_running_loop()
    client = ResilientClient([limited.ws_url], grace_token, sleep=sleep)
    began = loop.time()
    await client.start()
    took = loop.time() - began
    assert client.client is not None
    assert client.failures == (["HTTP 429"] if in_band == "never" else ["retry after 1000"])
    assert len(waits) == 1 and 1.0 <= waits[0] <= 1.5
    assert 1.0 <= took < waits[0] + 1.0  # the refusal and the next connection: quick
    await client.close()
    await first.close()
    limited.stop()


async def test_with_another_url_a_refusal_moves_on_after_the_usual_backoff(
    edge_factory: EdgeFactory, edge2: Edge
) -> None:
    """The hint is about the edge that gave it: with a second URL, the client tries that
    one after its first backoff step (at most 0.5 s), not after the drained edge's 1 s."""
    name = "edge-drained-next"
    drained = edge_factory.start(name)
    nc = await nats.connect(edge_factory.nats.url_for("operator"))  # playing the operator
    reply = await nc.request(f"sb.edge.{name}.ctl", b'{"command": "drain"}', timeout=5)
    assert json.loads(reply.data) == {"ok": True, "connections": 0}
    await nc.close()
    waits: list[float] = []
    sleep = recording_sleep(waits)

    client = ResilientClient([drained.ws_url, edge2.ws_url], grace_token, sleep=sleep)
    await client.start()
    assert client.client is not None
    assert client.client.welcome["node"] == "edge-2"
    assert client.failures == ["HTTP 503"]
    assert len(waits) == 1 and waits[0] <= 0.5
    await client.close()
    drained.stop()


async def test_events_the_edge_delivers_twice_are_counted_and_dropped(
    nats_server: NatsServer, edge1: Edge
) -> None:
    """Clients de-duplicate by offset (docs/channels.md, delivery guarantees): here the
    edge really sends events the client already has (a recovery asked for, on the
    client's live connection, from an older offset than it has received), and the
    application sees each event once while `duplicates` counts the ones dropped."""
    manifest = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: twice}
spec:
  history: {size: 100, ttl: 10m}
"""
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=manifest)
    await asyncio.sleep(0.5)  # the session's edge reads Channels as they change

    async def ivan() -> str:
        return token("ivan")

    client = ResilientClient([edge1.ws_url], ivan)
    await client.start()
    first = await client.subscribe("twice:room")
    publisher = await Client.connect(edge1.ws_url, token=token("judy"))
    acks = [await publisher.publish("twice:room", n) for n in range(6)]
    assert [await next_data(client) for _ in range(6)] == list(range(6))
    assert client.duplicates == 0
    assert client.positions["twice:room"]["offset"] == acks[5]["offset"]

    # Recovery from after event 1 on the same connection: the edge replays 2..5,
    # which the client has had (the frames are really on the wire: counted, dropped).
    assert client.client is not None
    received = client.client.frames_received
    since = {"offset": acks[1]["offset"], "epoch": first["epoch"]}
    ack = await client.client.subscribe("twice:room", since=since)
    assert ack["recovered"] is True
    async with asyncio.timeout(5):
        while client.duplicates < 4:
            await asyncio.sleep(0.02)
    assert client.client.frames_received > received  # the replay came over the socket
    await publisher.publish("twice:room", 6)
    assert await next_data(client) == 6  # next after 5: none of 2..5 came out again
    assert client.duplicates == 4
    await asyncio.sleep(0.3)
    assert client.duplicates == 4
    await publisher.close()
    await client.close()
    await asyncio.to_thread(channel_cli, nats_server, "delete", "twice")


async def test_a_resume_token_expired_on_the_way_falls_back_to_resubscribing(
    edge_factory: EdgeFactory, edge2: Edge
) -> None:
    """A drain's resume token that expired while the client was refused elsewhere is
    answered 401; the client connects with its token instead and must then subscribe
    again itself (the edge restored nothing)."""
    mover = edge_factory.start("edge-ttl", resume_ttl_s="1", reconnect_jitter_ms="0")
    drained = edge_factory.start("edge-ttl-drained")
    operator = await nats.connect(edge_factory.nats.url_for("operator"))
    reply = await operator.request("sb.edge.edge-ttl-drained.ctl", b'{"command": "drain"}')
    assert json.loads(reply.data)["ok"] is True

    async def kim() -> str:
        return token("kim")

    async def slow(seconds: float) -> None:
        await asyncio.sleep(max(seconds, 1.2))  # a slow way back: the 1 s token expires

    client = ResilientClient([mover.ws_url, drained.ws_url, edge2.ws_url], kim, sleep=slow)
    await client.start()
    await client.subscribe("ttl:room")
    publisher = await Client.connect(edge2.ws_url, token=token("lee"))
    await publisher.publish("ttl:room", "before")
    assert await next_data(client) == "before"
    # drained: to the drained edge (503), then, 1.2 s later, to edge-2 with a token
    # that lived 1 s: 401, then the plain token
    await operator.request("sb.edge.edge-ttl.ctl", b'{"command": "drain"}')
    async with asyncio.timeout(30):  # three attempts of >= 1.2 s on a busy machine
        while client.connections < 2:
            await asyncio.sleep(0.02)
    assert client.client is not None and client.client.welcome["node"] == "edge-2"
    assert client.failures[-1] == "HTTP 503" and client.resumed == 0
    await publisher.publish("ttl:room", "after")
    assert await next_data(client) == "after"  # subscribed again
    await publisher.close()
    await client.close()
    await operator.close()
    mover.stop()
    drained.stop()
