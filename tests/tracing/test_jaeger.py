"""Traces as a user sees them: edges, a backend and the operator export OTLP to a real Jaeger.

Every process is configured by the standard `OTEL_*` variables only. Edge A sends
OTLP/HTTP under the default service name with extra resource attributes; edge B sends
OTLP/gRPC under a configured `OTEL_SERVICE_NAME`. The backend is the example of
docs/edge.md, run as written. The operator runs against kmock (an in-memory API
server: see tests/operator) and a real nats-server. The assertions read Jaeger's
HTTP query API, the one its UI uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import websockets

from switchboard.cli.launch import EdgeProcess, LocalProcess, edge_env, free_port
from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client
from switchboard.contract.channels import channel_subject
from tests.conftest import ALLOWED_ORIGINS, SECRET, token
from tests.integration.helpers import next_event
from tests.operator.harness import (
    ApiClient,
    edgepool_path,
    eventually,
    kmock_api,
    run_operator,
    write_kubeconfig,
)
from tests.operator.test_operator_kmock import NS, _deployment, _pool
from tests.tracing.jaeger import Jaeger, Span

DOCS = Path(__file__).resolve().parents[2] / "docs" / "edge.md"
EDGE_SERVICE = "switchboard-edge"  # edge A: the default
BLUE_SERVICE = "switchboard-edge-blue"  # edge B: OTEL_SERVICE_NAME
BACKEND_SERVICE = "orders-backend"


def _edge(
    nats: NatsServer, name: str, tmp: Path, otel: dict[str, str], **settings: str
) -> EdgeProcess:
    port = free_port()
    env = edge_env(
        nats,
        name=name,
        port=port,
        jwt_secret=SECRET,
        settings={"allowed_origins": ALLOWED_ORIGINS, **settings},
    )
    edge = EdgeProcess(name, port, env | otel, log_path=str(tmp / f"{name}.log"))
    return edge.start(20)


@pytest.fixture(scope="module")
def edges(
    jaeger: Jaeger, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EdgeProcess, EdgeProcess]]:
    tmp = tmp_path_factory.mktemp("traced-edges")
    a = _edge(
        nats_server,
        "trace-a",
        tmp,
        jaeger.otel_env()
        | {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test,k8s.pod.name=trace-a"},
    )
    b = _edge(nats_server, "trace-b", tmp, jaeger.otel_env(BLUE_SERVICE, grpc=True))
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def _one(spans: list[Span], name: str, service: str | None = None) -> Span:
    found = [s for s in spans if s.name == name and (service is None or s.service == service)]
    assert len(found) == 1, (name, service, [(s.name, s.service) for s in spans])
    return found[0]


def _trace_with(jaeger: Jaeger, service: str, operation: str, names: set[str]) -> list[Span]:
    """The newest trace that has `operation` of `service`, once it holds spans named `names`."""

    def find() -> list[Span] | None:
        for trace in jaeger.traces(service, operation=operation):
            if names <= {s.name for s in trace}:
                return trace
        return None

    result: list[Span] = jaeger.wait_for(find, what=f"{operation} with {sorted(names)}")
    return result


async def test_a_publish_on_one_edge_and_its_delivery_on_another_are_one_trace(
    jaeger: Jaeger, edges: tuple[EdgeProcess, EdgeProcess]
) -> None:
    a, b = edges
    subject = channel_subject("sb", "traced:room")
    sub = await Client.connect(b.ws_url, token=token("bob"))
    pub = await Client.connect(a.ws_url, token=token("alice"))
    try:
        await sub.subscribe("traced:room")
        await pub.publish("traced:room", {"text": "follow me"})
        assert (await next_event(sub))["payload"]["data"] == {"text": "follow me"}
    finally:
        await sub.close()
        await pub.close()

    names = {f"publish {subject}", f"process {subject}"}
    spans = _trace_with(jaeger, EDGE_SERVICE, f"publish {subject}", names)
    publish = _one(spans, f"publish {subject}", EDGE_SERVICE)
    process = _one(spans, f"process {subject}", BLUE_SERVICE)  # only B has a subscriber
    assert process.parent() == publish.span_id
    assert publish.tags["span.kind"] == "producer"
    assert publish.tags["messaging.system"] == "nats"
    assert publish.tags["messaging.destination.name"] == subject
    assert publish.tags["messaging.operation.type"] == "send"
    assert publish.tags["messaging.operation.name"] == "publish"
    assert publish.tags["messaging.message.body.size"] == len(b'{"text":"follow me"}')
    assert publish.tags["messaging.client.id"] == "sb-edge:trace-a"
    assert publish.tags["enduser.id"] == "alice"
    assert process.tags["span.kind"] == "consumer"
    assert process.tags["messaging.operation.type"] == "process"
    assert process.tags["switchboard.delivery.connections"] == 1
    assert process.tags["messaging.client.id"] == "sb-edge:trace-b"
    # resources as configured: A's extra attributes, each edge's pod as its instance
    assert publish.process_tags["service.instance.id"] == "trace-a"
    assert publish.process_tags["deployment.environment.name"] == "test"
    assert publish.process_tags["k8s.pod.name"] == "trace-a"
    assert process.process_tags["service.instance.id"] == "trace-b"
    assert "deployment.environment.name" not in process.process_tags


async def test_upgrades_are_http_server_spans_with_their_status(
    jaeger: Jaeger, edges: tuple[EdgeProcess, EdgeProcess]
) -> None:
    a, _ = edges
    trace_id = secrets.token_hex(16)
    caller = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    async with websockets.connect(
        a.ws_url,
        subprotocols=[
            websockets.Subprotocol("switchboard.v1"),
            websockets.Subprotocol(f"bearer.{token('carol')}"),
        ],
        additional_headers={"traceparent": caller},
        user_agent_header="trace-test/1",
    ):
        pass
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(
            a.ws_url + "?ticket=not-a-ticket",
            subprotocols=[
                websockets.Subprotocol("switchboard.v1"),
                websockets.Subprotocol("bearer.not-a-token"),
            ],
        )
    assert refused.value.response.status_code == 401

    # the caller's traceparent: the upgrade joins its trace
    def accepted() -> list[Span] | None:
        return jaeger.trace(trace_id) or None

    upgrade = _one(jaeger.wait_for(accepted, what="the caller's trace"), "GET /v1/ws")
    assert upgrade.tags["span.kind"] == "server"
    assert upgrade.tags["http.response.status_code"] == 101
    assert upgrade.tags["http.route"] == "/v1/ws"
    assert upgrade.tags["user_agent.original"] == "trace-test/1"

    def refusal() -> Span | None:
        for trace in jaeger.traces(EDGE_SERVICE, operation="GET /v1/ws"):
            for span in trace:
                if span.tags.get("http.response.status_code") == 401:
                    return span
        return None

    refused_span: Span = jaeger.wait_for(refusal, what="the 401 upgrade")
    assert refused_span.tags["url.path"] == "/v1/ws"  # the query (a ticket) is never recorded


@pytest.fixture(scope="module")
def backend(
    jaeger: Jaeger, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalProcess]:
    """The backend example of docs/edge.md, run as written."""
    text = DOCS.read_text()
    match = re.search(
        r"<!-- backend-example:begin -->\n```python\n(.*?)```\n<!-- backend-example:end -->",
        text,
        re.DOTALL,
    )
    assert match is not None, "docs/edge.md has no backend example between its markers"
    tmp = tmp_path_factory.mktemp("backend")
    script = tmp / "backend.py"
    script.write_text(match.group(1))
    log = tmp / "backend.log"
    env = os.environ | jaeger.otel_env(BACKEND_SERVICE) | {"NATS_URL": nats_server.url}
    process = LocalProcess([sys.executable, str(script)], env, str(log)).spawn()
    deadline = time.monotonic() + 20
    while "ready" not in log.read_text():
        process.check_alive("the backend example")
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    try:
        yield process
    finally:
        assert process.stop(10) == 0, log.read_text()


async def test_an_rpc_through_the_edge_to_the_backend_and_its_publish_are_one_trace(
    jaeger: Jaeger, edges: tuple[EdgeProcess, EdgeProcess], backend: LocalProcess
) -> None:
    a, b = edges
    subject = channel_subject("sb", "orders")
    watchers = [await Client.connect(edge.ws_url, token=token(f"w-{edge.name}")) for edge in edges]
    caller = await Client.connect(a.ws_url, token=token("dave"))
    try:
        for watcher in watchers:
            await watcher.subscribe("orders")
        answer = await caller.rpc("orders.create", {"item": 7})
        assert answer == {"order": 42, "item": 7}
        for watcher in watchers:
            assert (await next_event(watcher))["payload"]["data"] == {"order": 42, "item": 7}
    finally:
        for client in (*watchers, caller):
            await client.close()

    rpc = "sb.rpc.orders.create"
    names = {rpc, f"publish {subject}", f"process {subject}"}
    spans = jaeger.wait_for(
        lambda: [
            t
            for t in jaeger.traces(EDGE_SERVICE, operation=rpc)
            if len([s for s in t if s.name == f"process {subject}"]) == 2
            and names <= {s.name for s in t}
        ],
        what="the RPC's trace with both edges' deliveries",
    )[0]
    edge_side = _one(spans, rpc, EDGE_SERVICE)
    server = _one(spans, rpc, BACKEND_SERVICE)
    publish = _one(spans, f"publish {subject}", BACKEND_SERVICE)
    assert edge_side.tags["span.kind"] == "client"
    assert edge_side.tags["rpc.method"] == "orders.create"
    assert edge_side.tags["messaging.destination.name"] == rpc
    assert server.tags["span.kind"] == "server"
    assert server.parent() == edge_side.span_id
    assert publish.parent() == server.span_id
    deliveries = [s for s in spans if s.name == f"process {subject}"]
    assert {s.service for s in deliveries} == {EDGE_SERVICE, BLUE_SERVICE}
    assert {s.process_tags["service.instance.id"] for s in deliveries} == {a.name, b.name}
    for delivery in deliveries:
        assert delivery.parent() == publish.span_id
        assert delivery.tags["switchboard.delivery.connections"] == 1
    assert len({s.trace_id for s in spans}) == 1


async def test_an_rpc_nobody_answers_is_a_failed_client_span(
    jaeger: Jaeger, edges: tuple[EdgeProcess, EdgeProcess]
) -> None:
    a, _ = edges
    caller = await Client.connect(a.ws_url, token=token("erin"))
    try:
        with pytest.raises(Exception, match="no backend"):
            await caller.rpc("nobody.home", {})
    finally:
        await caller.close()
    (span,) = jaeger.wait_for(
        lambda: [s for t in jaeger.traces(EDGE_SERVICE, operation="sb.rpc.nobody.home") for s in t],
        what="the failed RPC",
    )
    assert span.tags["error.type"] == "not_found"
    assert span.tags["error"] is True
    assert span.tags["otel.status_code"] == "ERROR"


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[ApiClient, Path]]:
    async with kmock_api() as (_, url), aiohttp.ClientSession() as session:
        yield ApiClient(session, url), write_kubeconfig(tmp_path / "kubeconfig", url)


async def test_the_operators_drain_grant_links_to_the_edges_drain(
    jaeger: Jaeger,
    nats_server: NatsServer,
    kube: tuple[ApiClient, Path],
    tmp_path: Path,
) -> None:
    api, kubeconfig = kube
    otel = jaeger.otel_env() | {"OTEL_RESOURCE_ATTRIBUTES": f"k8s.namespace.name={NS}"}
    labels = {"app": "sb-edge-traced"}
    await _deployment(api, "edge-traced", labels, replicas=1, pods=["traced-drain"])
    async with run_operator(
        kubeconfig,
        nats_server.url_for("operator"),
        NS,
        tmp_path,
        config=otel | {"SB_OPERATOR_STANDALONE": "true"},
    ) as operator:
        edge = _edge(
            nats_server, "traced-drain", tmp_path, jaeger.otel_env(), stats_interval_s="0.3"
        )
        try:
            clients = [await Client.connect(edge.ws_url, token=token(f"c{i}")) for i in range(3)]
            await api.create(
                edgepool_path(NS), _pool("traced", "edge-traced", target=1000, budget=20)
            )

            async def refreshed() -> bool:
                return "scale EdgePool" in {
                    s.name for t in jaeger.traces("switchboard-operator") for s in t
                }

            await eventually(refreshed, timeout=20)  # the pool knows its pod before it asks
        finally:
            assert edge.stop() == 0  # SIGTERM: drain (asks the operator), then exit
        for client in clients:
            assert await client.wait_closed() == 1001
        log = operator.log()

    def drain_trace() -> list[Span] | None:
        for trace in jaeger.traces(EDGE_SERVICE, operation="drain"):
            if any(s.process_tags.get("service.instance.id") == "traced-drain" for s in trace):
                return trace
        return None

    drain = _one(jaeger.wait_for(drain_trace, what="the edge's drain"), "drain")
    assert drain.tags["switchboard.drain.reason"] == "shutdown"
    assert drain.tags["switchboard.drain.connections"] == 3
    assert drain.tags["switchboard.drain.rate"] == 20

    def grant() -> Span | None:
        for trace in jaeger.traces("switchboard-operator", operation="grant drain"):
            for span in trace:
                if (drain.trace_id, drain.span_id) in span.follows():
                    return span
        return None

    granted: Span = jaeger.wait_for(grant, what="the grant linked to the drain")
    assert granted.trace_id != drain.trace_id  # a link, not a parent: each keeps its trace
    assert granted.tags["switchboard.pod"] == "traced-drain"
    assert granted.tags["switchboard.drain.rate"] == 20
    assert granted.process_tags["k8s.namespace.name"] == NS
    # the operator's log line for this grant carries its trace and span ids
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    (line,) = [
        x for x in lines if x.get("msg") == "drain granted" and x.get("pod") == "traced-drain"
    ]
    assert (line["trace_id"], line["span_id"]) == (granted.trace_id, granted.span_id)

    # each scaling decision, its inputs and result, inside the pool's reconcile
    scale = next(
        s
        for t in jaeger.traces("switchboard-operator", operation="scale EdgePool")
        for s in t
        if s.name == "scale EdgePool"
    )
    assert scale.tags["switchboard.edgepool"] == f"{NS}/traced"
    assert scale.tags["switchboard.scaling.replicas"] == 1
    assert scale.tags["switchboard.scaling.desired_replicas"] >= 1
    assert scale.tags["switchboard.scaling.target_connections_per_pod"] == 1000
    assert scale.tags["switchboard.scaling.reason"]
    reconcile = _one(jaeger.trace(scale.trace_id), "reconcile EdgePool")
    assert scale.parent() == reconcile.span_id
    assert reconcile.tags["switchboard.name"] == "traced"


async def test_a_bad_otel_variable_stops_the_process_naming_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    for key, value in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
    ]:
        port = free_port()
        env = edge_env(nats_server, name="bad-otel", port=port, jwt_secret=SECRET) | {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            key: value,
        }
        log = tmp_path / f"{key}.log"
        process = LocalProcess(EdgeProcess("x", port, env).args, env, str(log)).spawn()
        assert process.process is not None
        code = await asyncio.to_thread(process.process.wait, 20)
        assert code == 2, log.read_text()
        assert key in log.read_text()
