"""NATS killed and restarted: the edge keeps clients, acks nothing while down, resubscribes."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client, SwitchboardError
from tests.conftest import EdgeFactory, token
from tests.integration.helpers import channel_cli, next_event, wait_for


@pytest.fixture
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=str(tmp_path_factory.mktemp("nats-outage")), auth=True).start()
    yield server
    server.stop()


def ready(url: str) -> bool:
    """`/readyz` on an admin port: 200 ready, 503 not; anything else is a mistake."""
    try:
        with urllib.request.urlopen(f"{url}/readyz") as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as err:
        if err.code != 503:
            raise AssertionError(f"{url}/readyz answered {err.code}") from err
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
        await wait_for(lambda: not ready(edge.admin_url), timeout=10)
        with pytest.raises(SwitchboardError) as refused:
            await pub.publish("outage:room", "while down")
        assert refused.value.code == "unavailable"
        assert refused.value.retryable
        with pytest.raises(SwitchboardError) as rpc_refused:
            await pub.rpc("any.method", None)
        assert rpc_refused.value.code == "unavailable"
        await asyncio.sleep(3)

        own_nats.start()  # same port, same store
        await wait_for(lambda: ready(edge.admin_url), timeout=20)
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


KEEP = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: keep}
spec:
  history: {size: 10000, ttl: 1h}
"""
BACKLOG = 5000


async def publish_until_acked(js: Any, subject: str, data: bytes) -> tuple[int, float]:
    """Publish into the stream, retrying while NATS is not back; offset and ack time."""
    while True:
        try:
            ack = await js.publish(subject, data, timeout=1)
            return int(ack.seq), time.monotonic()
        except (nats.errors.Error, TimeoutError):
            await asyncio.sleep(0.02)


async def events_of(client: Client, channel: str) -> list[int]:
    """Offsets of the next event; a `gap` on `channel` fails (its history covers it),
    the one on the user's own plain channel is expected."""
    msg = await client.next_message(20)
    assert msg["payload"]["channel"] != channel or msg["type"] == "event", msg
    return [msg["payload"]["offset"]] if msg["type"] == "event" else []


async def test_history_channels_resume_at_once_and_a_5000_event_backlog_recovers(
    own_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """NATS away for 3 s. A subscriber that stayed connected gets live events again
    within 1 s of NATS' return with nothing lost (no `gap`: the history covers it); a
    plain channel gets its `gap`; a subscriber that was away recovers all 5,000."""
    factory = EdgeFactory(own_nats, str(tmp_path_factory.mktemp("outage-keep")))
    edge = factory.start("edge-keep")
    backend = await nats.connect(own_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    js = backend.jetstream()
    try:
        assert await asyncio.to_thread(channel_cli, own_nats, "apply", "-f", "-", stdin=KEEP)
        await asyncio.sleep(0.5)
        live = await Client.connect(edge.ws_url, token=token("live"))
        plain = await Client.connect(edge.ws_url, token=token("plain"))
        away = await Client.connect(edge.ws_url, token=token("away"))
        start = await live.subscribe("keep:feed")
        await plain.subscribe("plain:feed")
        position = {
            "offset": (await away.subscribe("keep:feed"))["offset"],
            "epoch": start["epoch"],
        }
        await away.close()

        data = json.dumps({"pad": "x" * 1000}).encode()
        sent = [(await publish_until_acked(js, "sb.ch.keep.feed", data))[0] for _ in range(2500)]
        own_nats.stop(keep_store=True)
        await asyncio.sleep(3)
        own_nats.start()
        offset, acked_at = await publish_until_acked(js, "sb.ch.keep.feed", data)
        sent.append(offset)
        got: list[int] = []
        async with asyncio.timeout(30):
            while offset not in got:
                got += await events_of(live, "keep:feed")
        stall = time.monotonic() - acked_at
        print(f"history channel live again {stall * 1000:.0f} ms after the first ack")
        assert stall < 1.0
        sent += [
            (await publish_until_acked(js, "sb.ch.keep.feed", data))[0]
            for _ in range(BACKLOG - len(sent))
        ]
        async with asyncio.timeout(30):
            while len(got) < len(sent):
                got += await events_of(live, "keep:feed")
        assert got == sent  # nothing lost, nothing twice, in order
        gaps = [await plain.next_message(10), await plain.next_message(10)]
        assert {(g["type"], g["payload"]["channel"]) for g in gaps} == {
            ("gap", "plain:feed"),
            ("gap", "#plain"),
        }

        back = await Client.connect(edge.ws_url, token=token("away"))
        started = time.monotonic()
        ack = await back.subscribe("keep:feed", since=position)
        assert ack["recovered"] is True
        recovered: list[int] = []
        async with asyncio.timeout(60):
            while len(recovered) < BACKLOG:
                recovered.append((await next_event(back, 20))["payload"]["offset"])
        print(f"recovered {BACKLOG} events in {time.monotonic() - started:.2f} s")
        assert recovered == sent
        for client in (live, plain, back):
            await client.close()
    finally:
        await backend.close()
        factory.stop_all()


async def test_nats_lost_mid_replay_closes_1013_and_the_client_resumes_from_its_offset(
    own_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A replay cannot go on without NATS: the client is closed 1013 `recovery
    interrupted` (never a silent stop), and once NATS is back `since` at the last
    offset it got brings the rest, none twice."""
    factory = EdgeFactory(own_nats, str(tmp_path_factory.mktemp("outage-replay")))
    edge = factory.start("edge-replay")
    backend = await nats.connect(own_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    js = backend.jetstream()
    try:
        assert await asyncio.to_thread(channel_cli, own_nats, "apply", "-f", "-", stdin=KEEP)
        await asyncio.sleep(0.5)
        data = json.dumps({"pad": "x" * 60_000}).encode()
        sent = [(await publish_until_acked(js, "sb.ch.keep.big", data))[0] for _ in range(400)]
        client = await Client.connect(edge.ws_url, token=token("slow"))
        epoch = (await client.subscribe("keep:big"))["epoch"]
        await client.unsubscribe("keep:big")
        client.ws.transport.pause_reading()  # a slow reader: the replay waits on it
        since = {"offset": sent[0] - 1, "epoch": epoch}
        request = {
            "type": "subscribe",
            "id": "r",
            "payload": {"channel": "keep:big", "since": since},
        }
        await client.send_raw(json.dumps(request))
        await asyncio.sleep(0.5)
        own_nats.stop(keep_store=True)
        client.ws.transport.resume_reading()
        got: list[int] = []
        async with asyncio.timeout(20):
            async for msg in client.events():  # ends when the connection closes
                if msg["type"] == "event":
                    got.append(msg["payload"]["offset"])
        assert client.close_code == 1013
        assert client.ws.close_reason == "recovery interrupted"
        assert 0 < len(got) < len(sent)
        assert got == sent[: len(got)]
        own_nats.start()
        await wait_for(lambda: ready(edge.admin_url), timeout=20)
        back = await Client.connect(edge.ws_url, token=token("slow"))
        ack = await back.subscribe("keep:big", since={"offset": got[-1], "epoch": epoch})
        assert ack["recovered"] is True
        rest = [(await next_event(back, 20))["payload"]["offset"] for _ in sent[len(got) :]]
        assert got + rest == sent
        await back.close()
    finally:
        await backend.close()
        factory.stop_all()
