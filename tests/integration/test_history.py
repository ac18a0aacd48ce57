"""Channels with history: stored in JetStream, offsets and epoch on acks and events,
`msg_id` de-duplicated."""

from __future__ import annotations

import asyncio

import nats

from switchboard.client import Client
from switchboard.natsserver import NatsServer
from tests.conftest import Edge, token
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
    nc = await nats.connect(nats_server.url)
    info = await nc.jetstream().stream_info("SB_CH_hist")
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
