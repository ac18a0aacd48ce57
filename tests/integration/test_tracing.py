"""One trace from a publish on edge 1 to its delivery on edge 2, in one process.

The two edges run in this test's process (real EdgeServer, real sockets, real
nats-server) so that the SDK's in-memory exporter sees both sides at once. The same
paths as processes exporting OTLP to a real Jaeger are in tests/tracing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edge.app import connect_backbone, make_verifier
from edge.server import EdgeServer
from edge.settings import load_edge_settings
from switchboard import telemetry
from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client
from switchboard.contract.channels import channel_subject
from switchboard_operator import tracing as operator_tracing
from switchboard_operator.backbone import OperatorBackbone
from tests.conftest import SECRET, token
from tests.integration.helpers import next_event

EXPORTER = InMemorySpanExporter()


@pytest.fixture
async def traced_edges(nats_server: NatsServer) -> AsyncIterator[list[EdgeServer]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    telemetry.use(provider)
    servers = []
    for pod in ("trace-1", "trace-2"):
        settings = load_edge_settings(
            host="127.0.0.1",
            port=0,
            admin_port=0,
            pod_name=pod,
            nats_url=nats_server.url_for("edge"),  # an edge's permissions, as in a pod
            jwt_secret=SECRET,
        )
        server = EdgeServer(settings, await connect_backbone(settings), make_verifier(settings))
        await server.start()
        servers.append(server)
    yield servers
    for server in servers:
        await server.shutdown()
        await server.backbone.close()  # type: ignore[attr-defined]
    telemetry.shutdown()  # the tests after this one run untraced again


async def test_publish_and_remote_delivery_are_one_trace(traced_edges: list[EdgeServer]) -> None:
    one, two = traced_edges
    sub = await Client.connect(f"ws://127.0.0.1:{two.port}/v1/ws", token=token("bob"))
    pub = await Client.connect(f"ws://127.0.0.1:{one.port}/v1/ws", token=token("alice"))
    await sub.subscribe("traced:room")
    EXPORTER.clear()
    await pub.publish("traced:room", "follow me")
    assert (await next_event(sub))["payload"]["data"] == "follow me"
    await sub.close()
    await pub.close()

    spans = EXPORTER.get_finished_spans()
    subject = channel_subject("sb", "traced:room")
    publish = next(s for s in spans if s.name == f"publish {subject}")
    deliveries = [s for s in spans if s.name == f"process {subject}"]
    assert publish.attributes is not None
    assert publish.attributes["messaging.client.id"] == "sb-edge:trace-1"
    assert len(deliveries) == 1
    delivery = deliveries[0]
    assert delivery.attributes is not None
    assert delivery.attributes["messaging.client.id"] == "sb-edge:trace-2"
    assert delivery.context is not None and publish.context is not None
    assert delivery.context.trace_id == publish.context.trace_id
    assert delivery.parent is not None
    assert delivery.parent.span_id == publish.context.span_id
    assert delivery.attributes["switchboard.delivery.connections"] == 1
    upgrades = [s for s in spans if s.name == "GET /v1/ws"]
    assert upgrades == []  # connections were made before clear(); upgrades traced below

    EXPORTER.clear()
    await (await Client.connect(f"ws://127.0.0.1:{one.port}/v1/ws", token=token("x"))).close()
    statuses = [
        s.attributes["http.response.status_code"]
        for s in EXPORTER.get_finished_spans()
        if s.name == "GET /v1/ws" and s.attributes
    ]
    assert statuses == [101]


async def test_an_edges_shed_links_to_the_operators_rebalance(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's real backbone sends the shed inside its `rebalance EdgePool` span;
    the edge, over real NATS, runs a `shed` span linked to it (each keeps its trace).

    A provider of the test's own (OpenTelemetry's global one can be set only once per
    process, and the fixture above set and shut it down)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "enabled", lambda: True)
    monkeypatch.setattr(telemetry, "tracer", provider.get_tracer)
    settings = load_edge_settings(
        host="127.0.0.1",
        port=0,
        admin_port=0,
        pod_name="shed-traced",
        nats_url=nats_server.url_for("edge"),
        jwt_secret=SECRET,
    )
    edge = EdgeServer(settings, await connect_backbone(settings), make_verifier(settings))
    await edge.start()
    await edge.listen_for_control()
    operator = OperatorBackbone(nats_server.url_for("operator"), "sb", 10.0)
    await operator.connect()
    clients = []
    try:
        for i in range(3):
            url = f"ws://127.0.0.1:{edge.port}/v1/ws"
            clients.append(await Client.connect(url, token=token(f"shed-{i}")))
        with operator_tracing.rebalance_span("ns/edge", {"shed-traced": 2}, 50.0, 0.8, 0.2):
            await operator.send_shed("shed-traced", 2, 50.0)
        moved = clients[1:]  # a shed moves the newest connections first
        codes = await asyncio.gather(*(c.wait_closed(10) for c in moved))
        assert codes == [1001, 1001]

        def finished(name: str) -> list[Any]:
            return [s for s in exporter.get_finished_spans() if s.name == name]

        async with asyncio.timeout(10):
            while not finished("shed"):  # it ends once its moves have closed
                await asyncio.sleep(0.05)
    finally:
        await operator.close()
        for client in clients:
            await client.close()
        await edge.shutdown()
        await edge.backbone.close()  # type: ignore[attr-defined]
    (rebalance,) = finished("rebalance EdgePool")
    (shed,) = finished("shed")
    assert dict(shed.attributes or {}) == {
        "switchboard.pod": "shed-traced",
        "switchboard.shed.reason": "rebalance",
        "switchboard.shed.connections": 2,
        "switchboard.shed.rate": 50.0,
        "switchboard.shed.moved": 2,
    }
    assert [link.context.span_id for link in shed.links] == [rebalance.context.span_id]
    assert shed.context.trace_id != rebalance.context.trace_id  # a link, not a parent
    assert dict(rebalance.attributes or {}) == {
        "switchboard.edgepool": "ns/edge",
        "switchboard.rebalance.pods": ("shed-traced",),
        "switchboard.rebalance.connections": 2,
        "switchboard.rebalance.rate": 50.0,
        "switchboard.rebalance.imbalance": 0.8,
        "switchboard.rebalance.max_imbalance": 0.2,
    }
