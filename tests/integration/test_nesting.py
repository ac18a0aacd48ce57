"""Nothing acked is lost (issue 18): nesting, through a real edge and nats-server.

A client payload nested deeper than 64 levels is refused `bad_request` before
any ack; backend data that deep (975 levels: the depth that used to be acked,
then dropped in the fan-out) arrives as its text, live and replayed from history;
what cannot arrive at all (not UTF-8) is counted in sb_edge_dropped_messages_total.
"""

from __future__ import annotations

import asyncio
import json

import nats

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client
from tests.conftest import Edge, token
from tests.integration.helpers import channel_cli, next_event, scrape_metrics, settle

DEEP = "[" * 975 + "]" * 975
DROPPED = "sb_edge_dropped_messages_total"
HIST = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: deephist}
spec:
  history: {size: 50, ttl: 10m}
"""


def nested(depth: int) -> str:
    text = "1"
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"k":{text}}}'
    return text


async def test_deep_client_payload_is_refused_before_any_ack(edge1: Edge) -> None:
    sub = await Client.connect(edge1.ws_url, token=token("bob"))
    pub = await Client.connect(edge1.ws_url, token=token("alice"))
    await sub.subscribe("deep:room")
    for depth in (65, 975):
        frame = '{"type":"publish","id":"deep","payload":{"channel":"deep:room","data":'
        await pub.send_raw(frame + nested(depth) + "}}")
        assert await pub.next_message() == {
            "type": "error",
            "id": "deep",
            "payload": {
                "code": "bad_request",
                "message": "JSON nested deeper than 64 levels",
                "retryable": False,
            },
        }
    # at the limit: acked, and every subscriber gets the very same value (and nothing else first)
    at_limit = json.loads(nested(64))
    assert await pub.publish("deep:room", at_limit) == {"channel": "deep:room"}
    assert (await next_event(sub))["payload"]["data"] == at_limit
    await sub.close()
    await pub.close()


async def test_deep_backend_payload_arrives_as_text_live_and_replayed(
    nats_server: NatsServer, edge1: Edge, edge2: Edge
) -> None:
    assert await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=HIST)
    await asyncio.sleep(0.5)  # both edges have read the config
    plain = await Client.connect(edge1.ws_url, token=token("bob"))
    stored = await Client.connect(edge2.ws_url, token=token("bob"))
    await plain.subscribe("deep:backend")
    start = await stored.subscribe("deephist:room")
    dropped = [(await asyncio.to_thread(scrape_metrics, e))[DROPPED] for e in (edge1, edge2)]

    nc = await nats.connect(nats_server.url)
    await nc.publish("sb.ch.deep.backend", DEEP.encode())
    await nc.publish("sb.ch.deep.backend", b"\xff not utf-8")
    await nc.publish("sb.ch.deep.backend", b'"after"')
    js = nc.jetstream()
    await js.publish("sb.ch.deephist.room", DEEP.encode())
    await js.publish("sb.ch.deephist.room", b"\xff not utf-8")
    await js.publish("sb.ch.deephist.room", b'"after"')
    await settle(nc)

    assert (await next_event(plain))["payload"]["data"] == DEEP
    assert (await next_event(plain))["payload"]["data"] == "after"
    live = [(await next_event(stored))["payload"] for _ in range(2)]
    assert [event["data"] for event in live] == [DEEP, "after"]

    # a late subscriber recovers the same from history
    late = await Client.connect(edge2.ws_url, token=token("carol"))
    ack = await late.subscribe(
        "deephist:room", since={"offset": start["offset"], "epoch": start["epoch"]}
    )
    assert ack["recovered"] is True
    replayed = [(await next_event(late))["payload"]["data"] for _ in range(2)]
    assert replayed == [DEEP, "after"]

    # the non-UTF-8 ones could not be delivered: counted, live on each edge and in the replay
    after = [(await asyncio.to_thread(scrape_metrics, e))[DROPPED] for e in (edge1, edge2)]
    assert after[0] - dropped[0] == 1
    assert after[1] - dropped[1] == 2
    await nc.close()
    for client in (plain, stored, late):
        await client.close()
