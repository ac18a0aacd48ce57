"""A real Prometheus server (Debian's `prometheus`) scraping real edges.

What these tests show that reading /metrics ourselves cannot: that Prometheus' own
parser accepts every exposition (one bad label value fails the whole scrape of a
pod), and that the series, histograms and dashboard queries work in PromQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import websockets
import yaml

from edge.hub import stamp_headers
from switchboard.cli.natsserver import NatsServer, free_port, stop_process, wait_for_port
from switchboard.client import Client, SwitchboardError
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import next_event, settle
from tests.operator.harness import (
    ApiClient,
    OperatorProcess,
    channel_path,
    deployment_path,
    edgepool_path,
    eventually,
    kmock_api,
    pod_path,
    ready,
    run_operator,
    write_kubeconfig,
)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SCRAPE_INTERVAL_S = 1


@dataclass(frozen=True)
class Target:
    """One scrape target: `host:port` and the labels Kubernetes discovery would add."""

    address: str
    labels: Mapping[str, str]


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (empty: no data)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active

    def wait_scraped(self, count: int, timeout_s: float = 20) -> list[dict[str, Any]]:
        """The targets once each was scraped at least `count` times after now (a
        scrape that started before now may predate the traffic)."""
        deadline = time.monotonic() + timeout_s
        since = time.time()
        while True:
            targets = self.targets()
            scraped = [t for t in targets if _epoch(t["lastScrape"]) > since + count - 1]
            if targets and len(scraped) == len(targets):
                return targets
            if time.monotonic() > deadline:
                raise TimeoutError(f"targets not scraped: {targets}\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _epoch(rfc3339: str) -> float:
    """Prometheus' `lastScrape` (RFC 3339, nanoseconds) as seconds since the epoch."""
    if rfc3339.startswith("0001-"):
        return 0.0
    stamp, _, frac = rfc3339.rstrip("Z").partition(".")
    seconds = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    digits = "".join(ch for ch in frac if ch.isdigit())
    return seconds + (float(f"0.{digits}") if digits else 0.0)


@contextlib.contextmanager
def run_prometheus(tmp: Path, jobs: Mapping[str, list[Target]]) -> Iterator[Prometheus]:
    """Prometheus scraping `jobs` every second; stopped (SIGTERM) at the end."""
    if not os.path.exists(PROMETHEUS):
        if os.environ.get("CI"):
            pytest.fail(f"prometheus not found at {PROMETHEUS}: .ci/run installs it")
        pytest.skip(f"prometheus not found at {PROMETHEUS} (apt-get install prometheus)")
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
            "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
        },
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [t.address], "labels": dict(t.labels)} for t in ts],
            }
            for job, ts in jobs.items()
        ],
    }
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp / "prometheus.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
        )
    try:
        wait_for_port(port, 30)
        prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
        deadline = time.monotonic() + 30
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as ready,
            ):
                if ready.status == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready:\n{prometheus.log()}")
            time.sleep(0.1)
        yield prometheus
    finally:
        stop_process(process, 20)


def edge_target(address: str, pod: str) -> Target:
    return Target(address, {"namespace": "switchboard", "pod": pod, "container": "edge"})


async def test_a_backend_error_code_with_a_quote_leaves_the_scrape_parsable(
    edge_factory: EdgeFactory, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A backend's `Sb-Error` code is any string: one with `"` or `\\` must neither
    break the exposition (Prometheus' parser rejects a whole scrape over one bad
    label value) nor add a series per distinct code (counted as `other` unless the
    settings name it)."""
    edge = edge_factory.start("prom-quote", metrics_error_codes='["conflict"]')
    backend = await nats.connect(nats_server.url)

    async def answer(msg: Any) -> None:
        await backend.publish(msg.reply, b"nope", headers={"Sb-Error": json.loads(msg.data)})

    await backend.subscribe("sb.rpc.fail", cb=answer)
    await settle(backend)
    client = await Client.connect(edge.ws_url, token=token("quoter"))
    try:
        for code in ('bad"code', "back\\slash", "conflict"):
            with pytest.raises(SwitchboardError) as raised:
                await client.rpc("fail", code)
            assert raised.value.code == code  # the client still gets it verbatim
    finally:
        await client.close()
        await backend.close()

    target = edge_target(f"127.0.0.1:{edge.admin_port}", edge.name)
    with run_prometheus(tmp_path, {"switchboard-edge": [target]}) as prometheus:
        (scraped,) = prometheus.wait_scraped(1)
        assert scraped["health"] == "up", scraped["lastError"]
        errors = {
            sample["metric"]["code"]: float(sample["value"][1])
            for sample in prometheus.query('sb_edge_errors_total{pod="prom-quote"}')
        }
        assert errors == {"other": 2.0, "conflict": 1.0}  # conflict: named in the settings


# -- two edges and the operator, scraped; the dashboard's queries answered -------------

NS = "switchboard"
FAST = {"stats_interval_s": "0.3"}
EDGE_SERIES = {
    "sb_edge_connections",
    "sb_edge_subscriptions",
    "sb_edge_connections_total",
    "sb_edge_deliveries_total",
    "sb_edge_publishes_total",
    "sb_edge_dropped_messages_total",
    "sb_edge_slow_consumer_evictions_total",
    "sb_edge_control_refused_total",
    "sb_edge_errors_total",
    "sb_edge_closes_total",
    "sb_edge_upgrade_refusals_total",
    "sb_edge_sse_streams",
    "sb_edge_sse_streams_total",
    "sb_edge_nats_connected",
    "sb_edge_accepting",
    "sb_edge_delivery_latency_seconds_bucket",
    "sb_edge_delivery_latency_seconds_sum",
    "sb_edge_delivery_latency_seconds_count",
    "sb_edge_handshake_duration_seconds_bucket",
    "sb_edge_handshake_duration_seconds_sum",
    "sb_edge_handshake_duration_seconds_count",
}
OPERATOR_SERIES = {
    "switchboard_operator_channel_applies_total",
    "switchboard_operator_channel_deletes_total",
    "switchboard_operator_scalings_total",
    "switchboard_operator_deletion_cost_patches_total",
    "switchboard_operator_drain_grants_total",
    "switchboard_operator_pool_connections",
    "switchboard_operator_pool_desired_replicas",
}
PROCESS_SERIES = {
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "python_gc_collections_total",
    "python_info",
}
DASHBOARDS = Path(__file__).parents[2] / "charts" / "switchboard" / "dashboards"


@dataclass
class Scraped:
    """Prometheus after it scraped two edges and the operator through some traffic."""

    prometheus: Prometheus
    edges: list[Edge]
    operator: OperatorProcess


@pytest.fixture(scope="module")
async def scraped(
    edge_factory: EdgeFactory, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scraped]:
    tmp = tmp_path_factory.mktemp("prometheus")
    names = ["prom-a", "prom-b"]
    async with (
        kmock_api() as (_, url),
        aiohttp.ClientSession() as session,
        run_operator(
            write_kubeconfig(tmp / "kubeconfig", url), nats_server.url_for("operator"), NS, tmp
        ) as operator,
    ):
        api = ApiClient(session, url)
        edges = [edge_factory.start(name, **FAST) for name in names]
        await _edge_pool(api, names)
        jobs = {
            "switchboard-edge": [edge_target(f"127.0.0.1:{e.admin_port}", e.name) for e in edges],
            "switchboard-operator": [
                Target(
                    f"127.0.0.1:{operator.metrics_port}",
                    {"namespace": NS, "pod": "operator", "container": "operator"},
                )
            ],
        }
        try:
            with run_prometheus(tmp, jobs) as prometheus:
                await asyncio.to_thread(prometheus.wait_scraped, 1)  # the "before" samples
                await _traffic(edges, nats_server, api)
                await _drain(edges[1], nats_server, operator)
                await asyncio.to_thread(prometheus.wait_scraped, 2)
                yield Scraped(prometheus, edges, operator)
        finally:
            for edge in edges:
                edge.stop()


async def _edge_pool(api: ApiClient, pods: list[str]) -> None:
    """An EdgePool whose Deployment's pods are the two edges (kmock has no controllers:
    the pods are created here), so the operator reports on them."""
    labels = {"app": "prom-edges"}
    await api.create(
        deployment_path(NS),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "prom-edges", "namespace": NS, "resourceVersion": "1"},
            "spec": {"replicas": len(pods), "selector": {"matchLabels": labels}},
        },
    )
    for pod in pods:
        await api.create(
            pod_path(NS),
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod,
                    "namespace": NS,
                    "labels": labels,
                    "resourceVersion": "1",
                },
            },
        )
    await api.create(
        edgepool_path(NS),
        {
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "EdgePool",
            "metadata": {"name": "prom", "namespace": NS, "resourceVersion": "1"},
            "spec": {
                "deployment": "prom-edges",
                "minReplicas": 1,
                "maxReplicas": 4,
                "targetConnectionsPerPod": 1000,
            },
        },
    )


MESSAGES = 40


async def _traffic(edges: list[Edge], nats_server: NatsServer, api: ApiClient) -> None:
    """Publishes across the two edges (latency), RPC errors, refusals, normal closes,
    an SSE refusal and a posted message, a Channel applied and deleted by the operator.
    Every series then has samples."""
    await api.create(
        channel_path(NS),
        {
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "Channel",
            "metadata": {"name": "promnews", "namespace": NS, "resourceVersion": "1"},
            "spec": {"publish": {"clients": True}},
        },
    )
    backend = await nats.connect(nats_server.url)

    async def refuse(msg: Any) -> None:
        await backend.publish(msg.reply, b"seat taken", headers={"Sb-Error": "conflict"})

    await backend.subscribe("sb.rpc.book", cb=refuse)
    await settle(backend)
    a = await Client.connect(edges[0].ws_url, token=token("alice"))
    b = await Client.connect(edges[1].ws_url, token=token("bob"))
    try:
        for client in (a, b):
            await client.subscribe("chat:prom")
        for n in range(MESSAGES):
            await (a if n % 2 else b).publish("chat:prom", {"n": n})
        for client in (a, b):
            for _ in range(MESSAGES):
                await next_event(client)
        for client in (a, b):
            with pytest.raises(SwitchboardError):
                await client.rpc("book", {"seat": 1})
            with pytest.raises(SwitchboardError):
                await client.rpc("nobody-answers", {})
        # a backend publish stamped as an edge would, and one without a stamp
        stamp = stamp_headers()
        await backend.publish("sb.ch.chat.prom", b'{"from": "backend"}', headers=stamp)
        await backend.publish("sb.ch.chat.prom", b'{"from": "backend"}')
        for client in (a, b):
            for _ in range(2):
                await next_event(client)
    finally:
        await a.close()
        await b.close()
        await backend.close()
    for edge in edges:
        for headers in ({}, {"Origin": "http://evil.example"}):
            with pytest.raises(websockets.InvalidStatus):
                await websockets.connect(edge.ws_url, additional_headers=headers)
    # the SSE fallback: a stream refused (no credentials) and a message posted
    publish = {"type": "publish", "payload": {"channel": "chat:prom", "data": "posted"}}
    async with aiohttp.ClientSession() as http:
        for edge in edges:
            async with http.get(f"{edge.http_url}/v1/sse?channel=chat:prom") as refused:
                assert refused.status == 401
            async with http.post(
                f"{edge.http_url}/v1/messages",
                json=publish,
                headers={"Authorization": f"Bearer {token('alice')}"},
            ) as posted:
                assert posted.status == 200, await posted.text()
    await eventually(lambda: _channel_ready(api))
    await api.delete(channel_path(NS, "promnews"))
    await eventually(lambda: _gone(api, channel_path(NS, "promnews")))


async def _channel_ready(api: ApiClient) -> bool:
    return (ready(await api.get(channel_path(NS, "promnews"))) or {}).get("status") == "True"


async def _gone(api: ApiClient, path: str) -> bool:
    return await api.get(path) is None


async def _drain(edge: Edge, nats_server: NatsServer, operator: OperatorProcess) -> None:
    """Drain `edge` by command (as `kubectl drain` would through the operator): it asks
    the operator for a pace, which shows in `switchboard_operator_drain_grant`."""

    async def pool_seen() -> bool:  # a pod's grant needs its pool refreshed first
        samples = await asyncio.to_thread(operator.metrics)
        return f'switchboard_operator_pool_desired_replicas{{pool="{NS}/prom"}}' in samples

    await eventually(pool_seen, timeout=20)
    nc = await nats.connect(nats_server.url_for("operator"))
    try:
        await nc.request(f"sb.edge.{edge.name}.ctl", b'{"command": "drain"}', timeout=5)
    finally:
        await nc.close()

    async def granted() -> bool:
        samples = await asyncio.to_thread(operator.metrics)
        return f'switchboard_operator_drain_grant{{pod="{edge.name}"}}' in samples

    await eventually(granted, timeout=20)


def _names(prometheus: Prometheus, selector: str) -> set[str]:
    return {s["metric"]["__name__"] for s in prometheus.query(f"{{{selector}}}")}


def test_prometheus_scrapes_two_edges_and_the_operator(scraped: Scraped) -> None:
    prometheus = scraped.prometheus
    health = {t["labels"]["pod"]: (t["health"], t["lastError"]) for t in prometheus.targets()}
    assert health == {"prom-a": ("up", ""), "prom-b": ("up", ""), "operator": ("up", "")}

    for edge in scraped.edges:
        names = _names(prometheus, f'pod="{edge.name}"')
        assert not (EDGE_SERIES | PROCESS_SERIES) - names, edge.name
    names = _names(prometheus, 'pod="operator"')
    assert not (OPERATOR_SERIES | PROCESS_SERIES) - names

    def by_pod(expr: str) -> dict[str, float]:
        return {s["metric"]["pod"]: float(s["value"][1]) for s in prometheus.query(expr)}

    # every event reached both edges: each counts 40 client publishes + 1 stamped
    # backend message (the unstamped one has no publish time to measure from)
    count = by_pod("sb_edge_delivery_latency_seconds_count")
    assert count == {"prom-a": MESSAGES + 1, "prom-b": MESSAGES + 1}
    # quantiles over the window, per edge: finite, and well under a second here
    p99 = by_pod(
        "histogram_quantile(0.99, sum by (le, pod) "
        "(rate(sb_edge_delivery_latency_seconds_bucket[1m])))"
    )
    assert set(p99) == {"prom-a", "prom-b"}
    assert all(0 < v < 1 for v in p99.values()), p99
    handshakes = {
        (s["metric"]["pod"], s["metric"]["result"]): float(s["value"][1])
        for s in prometheus.query(
            "histogram_quantile(0.5, sum by (le, pod, result) "
            "(rate(sb_edge_handshake_duration_seconds_bucket[1m])))"
        )
    }
    assert set(handshakes) == {
        (p, r) for p in ("prom-a", "prom-b") for r in ("accepted", "refused")
    }
    assert all(0 < v < 1 for v in handshakes.values()), handshakes

    errors = {
        (s["metric"]["pod"], s["metric"]["code"]): float(s["value"][1])
        for s in prometheus.query("sb_edge_errors_total")
    }
    assert errors == {(p, c): 1.0 for p in ("prom-a", "prom-b") for c in ("other", "not_found")}
    refusals = by_pod('sb_edge_upgrade_refusals_total{status="401",via="http"}')
    assert refusals == {"prom-a": 1.0, "prom-b": 1.0}
    assert by_pod('sb_edge_closes_total{code="1000"}') == {"prom-a": 1.0, "prom-b": 1.0}
    assert by_pod("process_open_fds") and all(v > 0 for v in by_pod("process_open_fds").values())

    operator = {
        s["metric"]["__name__"]: float(s["value"][1])
        for s in prometheus.query('{__name__=~"switchboard_operator_channel_.*"}')
    }
    assert operator["switchboard_operator_channel_applies_total"] >= 1
    assert operator["switchboard_operator_channel_deletes_total"] == 1
    (pool,) = prometheus.query("switchboard_operator_pool_desired_replicas")
    assert pool["metric"]["pool"] == f"{NS}/prom"
    (grant,) = prometheus.query("switchboard_operator_drain_grant")
    # drained by command; the operator's own `pod` label (its target's, as Kubernetes
    # discovery sets it) wins, and Prometheus keeps the series' one as `exported_pod`
    assert (grant["metric"]["pod"], grant["metric"]["exported_pod"]) == ("operator", "prom-b")
    assert by_pod("sb_edge_accepting") == {"prom-a": 1.0, "prom-b": 0.0}


def test_prometheus_accepts_the_expositions_as_promtool_lints_them(scraped: Scraped) -> None:
    """Prometheus' own linter (`promtool check metrics`) on what each process serves."""
    urls = [f"{e.admin_url}/metrics" for e in scraped.edges]
    urls.append(f"http://127.0.0.1:{scraped.operator.metrics_port}/metrics")
    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read()
        checked = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=30
        )
        assert checked.returncode == 0, (url, checked.stdout, checked.stderr)


# -- the Grafana dashboards the chart ships ---------------------------------------------

RATE_WINDOW = "1m"  # for $__rate_interval: with 1 s scrapes, it holds every sample


def dashboard_files() -> list[Path]:
    """Every dashboard JSON of the chart; missing is a failure, never a skip (the chart
    ships them, and this is what shows their queries work)."""
    assert DASHBOARDS.is_dir(), f"{DASHBOARDS} is missing: the chart ships its dashboards there"
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, f"no dashboard in {DASHBOARDS}"
    return files


def panels_of(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in board.get("panels", []):
        yield panel
        yield from panels_of(panel)


def variables(board: dict[str, Any], prometheus: Prometheus) -> dict[str, str]:
    """Each template variable as Grafana would fill it in: a query variable by its
    `label_values(metric, label)` answered by Prometheus (a regex of every value: each
    must exist), others by their current value."""
    values: dict[str, str] = {}
    for var in board.get("templating", {}).get("list", []):
        kind, name = var.get("type"), var["name"]
        if kind == "datasource":
            continue
        if kind == "query":
            query = var.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query)
            match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", text)
            assert match, f"variable {name}: only label_values(metric, label) is understood"
            metric, label = match.groups()
            found = prometheus.api(f"label/{label}/values", **{"match[]": metric})
            assert found, f"variable {name}: {text} has no values"
            values[name] = "|".join(re.escape(v) for v in found)
        else:
            current = (var.get("current") or {}).get("value")
            assert isinstance(current, str), f"variable {name} ({kind}) has no current value"
            values[name] = current
    return values


def fill(expr: str, values: Mapping[str, str]) -> str:
    for builtin in ("__rate_interval", "__interval", "__range"):
        expr = expr.replace(f"${{{builtin}}}", RATE_WINDOW).replace(f"${builtin}", RATE_WINDOW)
    for name in sorted(values, key=len, reverse=True):  # $namespace before $name
        for form in (f"${{{name}}}", f"[[{name}]]", f"${name}"):
            expr = expr.replace(form, values[name])
    assert not re.search(r"\$(?!\d)", expr), f"a variable is left in {expr}"  # $1: a regex group
    return expr


def test_every_dashboard_panel_returns_data(scraped: Scraped) -> None:
    """Each query of each panel of each dashboard, with its variables filled in as
    Grafana would, answers with data from the real Prometheus."""
    prometheus = scraped.prometheus
    empty, asked = [], 0
    for path in dashboard_files():
        board = json.loads(path.read_text())
        values = variables(board, prometheus)
        for panel in panels_of(board):
            for target in panel.get("targets") or []:
                if not target.get("expr"):
                    continue
                expr = fill(target["expr"], values)
                asked += 1
                result = prometheus.query(expr)
                if not result:
                    empty.append(f"{path.name}: {panel.get('title')}: {expr}")
                if "switchboard_operator_drain_grant" in expr and "pod" in target.get(
                    "legendFormat", ""
                ):  # the drained edge, not the operator's own pod (its target label)
                    assert {r["metric"].get("pod") for r in result} == {"prom-b"}, expr
    assert asked, "the dashboards hold no Prometheus queries"
    assert not empty, "panels without data:\n" + "\n".join(empty)
