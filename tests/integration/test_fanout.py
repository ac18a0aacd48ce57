"""Messages cross edges through a real nats-server; RPC reaches a real responder."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from nats.aio.msg import Msg

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client, SwitchboardError
from tests.conftest import Edge, token
from tests.integration.helpers import (
    edge_subjects,
    next_event,
    scrape_metrics,
    settle,
    wait_for,
)


async def test_publish_on_edge1_reaches_subscriber_on_edge2(edge1: Edge, edge2: Edge) -> None:
    sub = await Client.connect(edge2.ws_url, token=token("bob"))
    pub = await Client.connect(edge1.ws_url, token=token("alice"))
    ack = await sub.subscribe("room:cross")
    assert ack == {"channel": "room:cross", "offset": None, "epoch": None, "recovered": False}
    assert await pub.publish("room:cross", {"text": "hello"}) == {"channel": "room:cross"}
    event = await next_event(sub)
    assert event["payload"]["channel"] == "room:cross"
    assert event["payload"]["data"] == {"text": "hello"}
    assert event["payload"]["from"] == "alice"
    assert isinstance(event["payload"]["ts"], int)
    assert sub.welcome["node"] == "edge-2"
    assert pub.welcome["node"] == "edge-1"
    await sub.close()
    await pub.close()


async def test_order_is_kept_per_publisher(edge1: Edge, edge2: Edge) -> None:
    sub = await Client.connect(edge2.ws_url, token=token("bob"))
    pub = await Client.connect(edge1.ws_url, token=token("alice"))
    await sub.subscribe("room:order")
    for i in range(150):
        await pub.publish("room:order", i)
    got = [(await next_event(sub))["payload"]["data"] for _ in range(150)]
    assert got == list(range(150))
    await sub.close()
    await pub.close()


async def test_backend_message_to_a_user_reaches_all_their_connections(
    nats_server: NatsServer, edge1: Edge, edge2: Edge
) -> None:
    alices = [await Client.connect(e.ws_url, token=token("alice")) for e in (edge1, edge2, edge2)]
    bob = await Client.connect(edge1.ws_url, token=token("bob"))
    await wait_for(lambda: "sb.user.alice" in edge_subjects(nats_server, "edge-2"))
    nc = await nats.connect(nats_server.url)
    await nc.publish("sb.user.alice", json.dumps({"note": "for alice"}).encode())
    await settle(nc)
    for client in alices:
        event = await next_event(client)
        assert event["payload"]["channel"] == "#alice"
        assert event["payload"]["data"] == {"note": "for alice"}
    with pytest.raises(TimeoutError):
        await bob.next_message(timeout=0.3)
    await nc.close()
    for client in [*alices, bob]:
        await client.close()


async def test_backend_publish_to_channel_subject(nats_server: NatsServer, edge1: Edge) -> None:
    sub = await Client.connect(edge1.ws_url, token=token("bob"))
    await sub.subscribe("news:eu")
    nc = await nats.connect(nats_server.url)
    await nc.publish("sb.ch.news.eu", b'{"headline": "x"}', headers={"Sb-From": "newsroom"})
    await nc.publish("sb.ch.news.eu", b"plain text")
    await nc.publish("sb.ch.news.eu", b"NaN")
    await nc.publish("sb.ch.news.eu", b"\xff\xfe not utf-8")
    await nc.publish("sb.ch.news.eu", b'"after"')
    await settle(nc)
    first = await next_event(sub)
    assert first["payload"]["data"] == {"headline": "x"}
    assert first["payload"]["from"] == "newsroom"
    assert (await next_event(sub))["payload"]["data"] == "plain text"
    # not strict JSON: delivered as the text it is, never lost or crashed on
    assert (await next_event(sub))["payload"]["data"] == "NaN"
    # the non-UTF-8 message is dropped, not delivered garbled, and nothing else is lost
    assert (await next_event(sub))["payload"]["data"] == "after"
    metrics = await asyncio.to_thread(scrape_metrics, edge1)
    assert metrics["sb_edge_dropped_messages_total"] >= 1
    await nc.close()
    await sub.close()


async def test_rpc_reaches_a_nats_responder(nats_server: NatsServer, edge1: Edge) -> None:
    nc = await nats.connect(nats_server.url)
    seen: list[dict[str, str]] = []

    async def echo(msg: Msg) -> None:
        seen.append(dict(msg.headers or {}))
        await msg.respond(json.dumps({"echo": json.loads(msg.data)}).encode())

    async def fail(msg: Msg) -> None:
        await nc.publish(msg.reply, b"no such order", headers={"Sb-Error": "not_found"})

    await nc.subscribe("sb.rpc.test.echo", queue="backends", cb=echo)
    await nc.subscribe("sb.rpc.test.fail", cb=fail)
    await settle(nc)
    client = await Client.connect(edge1.ws_url, token=token("alice"))
    assert await client.rpc("test.echo", {"n": 1}) == {"echo": {"n": 1}}
    assert seen[0]["Sb-From"] == "alice"
    with pytest.raises(SwitchboardError) as failed:
        await client.rpc("test.fail", None)
    assert (failed.value.code, failed.value.message) == ("not_found", "no such order")
    with pytest.raises(SwitchboardError) as missing:
        await client.rpc("test.nobody", None)
    assert missing.value.code == "not_found"
    assert not missing.value.retryable

    async def never_answer(msg: Msg) -> None:
        pass

    await nc.subscribe("sb.rpc.test.slow", cb=never_answer)
    await settle(nc)
    with pytest.raises(SwitchboardError) as slow:
        await client.rpc("test.slow", None, timeout_ms=200)
    assert slow.value.code == "timeout", slow.value.message
    assert slow.value.retryable
    await client.close()
    await nc.close()


async def test_forbidden_subscribe_issues_no_nats_subscription(
    nats_server: NatsServer, edge1: Edge
) -> None:
    client = await Client.connect(edge1.ws_url, token=token("carol", channels=["allowed:*"]))
    with pytest.raises(SwitchboardError) as refused:
        await client.subscribe("secret:plans")
    assert refused.value.code == "forbidden"
    await client.subscribe("allowed:yes")
    subjects = edge_subjects(nats_server, "edge-1")
    assert "sb.ch.allowed.yes" in subjects
    assert "sb.ch.secret.plans" not in subjects
    await client.close()


async def test_publish_outside_token_patterns_is_forbidden(edge1: Edge) -> None:
    client = await Client.connect(edge1.ws_url, token=token("dave", publish=["mine:*"]))
    await client.publish("mine:1", "ok")
    with pytest.raises(SwitchboardError) as refused:
        await client.publish("yours:1", "no")
    assert refused.value.code == "forbidden"
    await client.close()


async def test_200_clients_on_one_channel_make_one_nats_subscription(
    nats_server: NatsServer, edge1: Edge, edge2: Edge
) -> None:
    clients = await asyncio.gather(
        *(Client.connect(edge1.ws_url, token=token(f"u{i}")) for i in range(200))
    )
    await asyncio.gather(*(c.subscribe("crowd:one") for c in clients))
    assert edge_subjects(nats_server, "edge-1").count("sb.ch.crowd.one") == 1
    pub = await Client.connect(edge2.ws_url, token=token("alice"))
    await pub.publish("crowd:one", "to everyone")
    events = await asyncio.gather(*(next_event(c) for c in clients))
    assert all(e["payload"]["data"] == "to everyone" for e in events)
    await asyncio.gather(*(c.unsubscribe("crowd:one") for c in clients[:199]))
    assert edge_subjects(nats_server, "edge-1").count("sb.ch.crowd.one") == 1
    await clients[199].close()  # the last member leaving by disconnecting releases it
    await wait_for(lambda: "sb.ch.crowd.one" not in edge_subjects(nats_server, "edge-1"))
    await asyncio.gather(*(c.close() for c in clients[:199]), pub.close())


async def test_authorization_header_works_for_non_browser_clients(edge2: Edge) -> None:
    client = await Client.connect(edge2.ws_url, token=token("erin"), header_token=True)
    assert client.welcome["user"] == "erin"
    assert client.ws.subprotocol == "switchboard.v1"
    await client.close()
