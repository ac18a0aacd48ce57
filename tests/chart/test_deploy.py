"""The deploy/ examples and the docs agree with the chart: the collector receives
where the production values send traces, and every file the docs name exists."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import yaml

from tests.chart.render import CHART, DEPLOY, ROOT, VALUE_SETS


def test_collector_receives_where_production_sends() -> None:
    collector = yaml.safe_load((DEPLOY / "otel-collector-values.yaml").read_text())
    endpoint = urlsplit(VALUE_SETS["deploy-production"]["otel"]["endpoint"])
    assert endpoint.scheme == "http"
    assert endpoint.hostname == f"{collector['fullnameOverride']}.observability.svc"
    http = collector["config"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http.endswith(f":{endpoint.port}")


def test_collector_pipeline_uses_only_defined_components() -> None:
    collector = yaml.safe_load((DEPLOY / "otel-collector-values.yaml").read_text())
    config = collector["config"]
    (traces,) = config["service"]["pipelines"].values()
    assert traces["receivers"] == ["otlp"]
    for kind in ("receivers", "processors", "exporters"):
        defined = set(config.get(kind, {}))
        if kind == "processors" and collector["presets"]["kubernetesAttributes"]["enabled"]:
            defined.add("k8sattributes")  # the chart's preset defines it
        assert set(traces[kind]) <= defined, kind
    # memory_limiter first and batch last, as the collector's docs recommend.
    assert traces["processors"][0] == "memory_limiter"
    assert traces["processors"][-1] == "batch"


def test_files_named_in_the_docs_exist() -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    named = set(re.findall(r"(?:deploy|charts)/[\w./-]+\.ya?ml", text))
    assert named
    for path in named:
        assert (ROOT / path).exists(), f"docs/kubernetes.md: {path}"
    # The chart README names files inside the chart (it is read from the package too).
    text = (CHART / "README.md").read_text()
    named = set(re.findall(r"`((?:crds|files|rules|dashboards)/[\w.-]+)`", text))
    assert len(named) >= 5, named
    for path in named:
        assert (CHART / path).exists(), f"charts/switchboard/README.md: {path}"
    # deploy/README.md's table lists the files by their names in deploy/.
    listed = re.findall(r"^\| `([^`]+)` \|", (DEPLOY / "README.md").read_text(), re.MULTILINE)
    shipped = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*.yaml")}
    assert set(listed) == shipped


def test_walkthrough_uses_the_charts_names() -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    for expected in (
        "helm install sb charts/switchboard",
        "svc/sb-switchboard-edge",
        "svc/sb-switchboard-edge-admin 9090:9090",
        "deploy/sb-switchboard-edge",
        "get channels,edgepools",
        "wscat -c ws://localhost:8080/v1/ws -s switchboard.v1",
        "helm upgrade sb charts/switchboard",
        "helm test sb",
    ):
        assert expected in text, expected
