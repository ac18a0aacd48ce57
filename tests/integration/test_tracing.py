"""One trace from a publish on edge 1 to its delivery on edge 2, in one process.

The two edges run in this test's process (real EdgeServer, real sockets, real
nats-server) so that the SDK's in-memory exporter sees both sides at once. The same
paths as processes exporting OTLP to a real Jaeger are in tests/tracing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

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
            nats_url=nats_server.url,
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
