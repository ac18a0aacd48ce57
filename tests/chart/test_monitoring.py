"""Prometheus and Grafana around the chart: ServiceMonitors and PodMonitors that
find the edges' and operator's /metrics, off unless the cluster serves their API
or they are switched on (tests/chart/test_thirdparty_apis.py checks `auto` on a
real API server); the Grafana dashboard in a ConfigMap for the sidecar, whose
every query is valid PromQL (promtool) over series the edge and the operator
really export (a real edge's /metrics)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from switchboard_operator.metrics import OperatorMetrics, exposition, registry_for
from tests.chart import promtool
from tests.chart.dashboard import DASHBOARD, dashboard, panel_queries, panels, series_names
from tests.chart.render import (
    NAMESPACE,
    Doc,
    Values,
    docs_of,
    find,
    find_all,
    parse,
    render,
)
from tests.conftest import Edge

MONITORS: Values = {
    "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}
}
OPTIONAL_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "HTTPRoute"}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_template(docs: list[Doc], component: str) -> Doc:
    workload = find(docs, "Deployment", f"-{component}")
    template: Doc = workload["spec"]["template"]
    return template


def test_without_the_api_nothing_optional_is_rendered() -> None:
    """Offline (as `helm template` without --api-versions) `auto` means off."""
    docs = docs_of("default")
    assert {d["kind"] for d in docs}.isdisjoint(OPTIONAL_KINDS)
    assert not [d for d in find_all(docs, "Service") if d["metadata"]["name"].endswith("-metrics")]


@pytest.mark.parametrize("admin_port", [9090, 9100])
def test_service_monitors_reach_each_metrics_port(admin_port: int) -> None:
    """Edges are scraped on their admin port, the operator on 9090."""
    docs = parse(render({**MONITORS, "edge": {"adminPort": admin_port}}))
    for component, port in (("edge", admin_port), ("operator", 9090)):
        monitor = find(docs, "ServiceMonitor", f"-{component}")
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        selected = [
            s
            for s in find_all(docs, "Service")
            if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        # Only the metrics Service: the client Service never names the metrics port.
        (service,) = selected
        assert service["metadata"]["name"].endswith(f"-{component}-metrics")
        assert service["spec"]["publishNotReadyAddresses"] is True  # draining edges too
        (service_port,) = service["spec"]["ports"]
        assert service_port["name"] == endpoint["port"]
        template = _pod_template(docs, component)
        assert _matches(service["spec"]["selector"], template["metadata"]["labels"])
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports[service_port["targetPort"]] == port
        assert service_port["port"] == port
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
    client = find(docs, "Service", "-edge")
    assert [p["name"] for p in client["spec"]["ports"]] == ["http"]


def test_pod_monitors_select_the_pods_and_name_their_ports() -> None:
    docs = parse(render({**MONITORS, "edge": {"adminPort": 9100}}))
    for component, port in (("edge", 9100), ("operator", 9090)):
        monitor = find(docs, "PodMonitor", f"-{component}")
        template = _pod_template(docs, component)
        assert _matches(monitor["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert endpoint["port"] in ports
        assert ports[endpoint["port"]] == port


def test_monitor_settings_and_labels_pass_through() -> None:
    docs = docs_of("monitoring")
    monitor = find(docs, "ServiceMonitor", "-edge")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scrapeTimeout"] == "10s"
    assert endpoint["interval"] == "30s"
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    (pod_endpoint,) = find(docs, "PodMonitor", "-operator")["spec"]["podMetricsEndpoints"]
    assert pod_endpoint["interval"] == "15s"
    assert pod_endpoint["relabelings"][0]["targetLabel"] == "cluster"
    # With prometheus-operator scraping, the annotations can go.
    for component in ("edge", "operator"):
        annotations = _pod_template(docs, component)["metadata"]["annotations"]
        assert "prometheus.io/scrape" not in annotations


def test_without_the_operator_only_edges_are_monitored() -> None:
    docs = parse(render({**MONITORS, "operator": {"enabled": False}}))
    for kind in ("ServiceMonitor", "PodMonitor"):
        assert [d["metadata"]["name"] for d in find_all(docs, kind)] == ["sb-switchboard-edge"]


def test_the_dashboard_ships_in_a_configmap_for_the_sidecar() -> None:
    config_map = find(docs_of("default"), "ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert json.loads(config_map["data"]["switchboard.json"]) == dashboard()

    moved = find(docs_of("monitoring"), "ConfigMap", "-dashboard")
    assert moved["metadata"]["namespace"] == "monitoring"
    assert moved["metadata"]["annotations"] == {"grafana_folder": "Switchboard"}

    relabelled = parse(
        render({"metrics": {"dashboard": {"labels": {"grafana_dashboard": None, "team": "rt"}}}})
    )
    labels = find(relabelled, "ConfigMap", "-dashboard")["metadata"]["labels"]
    assert "grafana_dashboard" not in labels
    assert labels["team"] == "rt"
    off = parse(render({"metrics": {"dashboard": {"enabled": False}}}))
    assert not [
        d for d in find_all(off, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")
    ]


def test_the_dashboard_is_grafana_json_with_a_datasource_and_namespace_variable() -> None:
    board = dashboard()
    assert board["uid"] == "switchboard"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert "namespace" in variables
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'namespace=~"$namespace"' in target["expr"], panel["title"]
    # Plain JSON, as committed: formatted, one trailing newline.
    assert DASHBOARD.read_text() == json.dumps(board, indent=2) + "\n"


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule): Prometheus would run it."""
    queries = panel_queries()
    assert len(queries) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(queries.values())
                ],
            }
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool.run("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _exported(exposition: str) -> set[str]:
    """Sample names in a Prometheus exposition, counters also under their _total name."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names.add(f"{name.removesuffix('_total')}_total")
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names


def test_every_panel_reads_series_the_edge_and_operator_export(edge1: Edge) -> None:
    with urllib.request.urlopen(f"{edge1.admin_url}/metrics", timeout=10) as response:
        edge = _exported(response.read().decode())
    operator = OperatorMetrics()
    operator.pool_connections["pool"] = 1
    operator.pool_desired["pool"] = 1
    operator.last_grant["pod"] = 1.0
    body, _ = exposition(registry_for(operator), None)
    exported = edge | _exported(body.decode())
    used = set().union(*(series_names(q) for q in panel_queries().values()))
    assert used <= exported, used - exported
    # Every series the edge exports today has a panel; a histogram counts as shown
    # when its buckets are (quantiles read `_bucket`, not `_sum`/`_count`).
    histograms = {n for n in edge if f"{n}_bucket" in edge}
    parts = {f"{h}{suffix}" for h in histograms for suffix in ("", "_sum", "_count")}
    edge_series = {n for n in edge if n.startswith("sb_edge_")} - parts
    assert edge_series <= used, edge_series - used


def test_the_notes_say_what_monitors_were_made() -> None:
    notes = render(MONITORS)["switchboard/templates/NOTES.txt"]
    assert "Monitoring: PodMonitor, ServiceMonitor for Prometheus" in notes
    assert "ConfigMap sb-switchboard-dashboard" in notes
    quiet = render({"metrics": {"dashboard": {"enabled": False}}})[
        "switchboard/templates/NOTES.txt"
    ]
    assert "Monitoring:" not in quiet
