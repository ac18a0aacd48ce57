"""The chart's objects of APIs it does not define (ServiceMonitor, PodMonitor,
PrometheusRule, HTTPRoute) on a real kube-apiserver (tests/controlplane) with their
published CRDs (tests/chart/thirdparty): accepted with strict field validation, so
the OpenAPI schemas, unknown fields and the CEL rules are all checked by the real
thing; and `auto` follows what the cluster serves, through the Helm engine's own
discovery (helm-python-sdk rendering against the cluster, as `helm install` does)."""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.chart.crd import THIRDPARTY
from tests.chart.render import CHART, RELEASE, VALUE_SETS, Doc
from tests.controlplane.cluster import ControlPlane

NS = "sb-thirdparty"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "HTTPRoute"}

pytestmark = pytest.mark.timeout(300)


def _call(plane: ControlPlane, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    try:
        return 200, plane.request(method, path, body)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _established(plane: ControlPlane, name: str) -> bool:
    crd = plane.request("GET", f"{CRDS}/{name}")
    conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
    return conditions.get("Established") == "True"


def _render(plane: ControlPlane, values: dict[str, Any]) -> list[Doc]:
    """`helm install --dry-run=server`: .Capabilities come from the cluster's discovery."""
    config = helm.Config(kubeconfig_path=plane.admin_kubeconfig(), namespace=NS)
    try:
        release = config.install(CHART, RELEASE, values, namespace=NS, dry_run="server")
    finally:
        config.close()
    return [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]


def _path(doc: Doc) -> str:
    group_version = doc["apiVersion"]
    plural = {
        "ServiceMonitor": "servicemonitors",
        "PodMonitor": "podmonitors",
        "PrometheusRule": "prometheusrules",
        "HTTPRoute": "httproutes",
    }[doc["kind"]]
    return f"/apis/{group_version}/namespaces/{NS}/{plural}"


@dataclass
class Cluster:
    plane: ControlPlane
    kinds_before: set[str]  # what the chart rendered before the CRDs were installed


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Iterator[Cluster]:
    """Renders once without the CRDs, then installs them (and removes them afterwards:
    other tests share this API server)."""
    _call(control_plane, "POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    # A dry run does not install the chart's own CRDs (a real install does, first).
    created = _install_crds(control_plane, sorted((CHART / "crds").glob("*.yaml")))
    try:
        before = {d["kind"] for d in _render(control_plane, {})}
        created += _install_crds(control_plane, sorted(THIRDPARTY.glob("*.yaml")))
        yield Cluster(control_plane, before)
    finally:
        for name in created:
            _call(control_plane, "DELETE", f"{CRDS}/{name}")
        _call(control_plane, "DELETE", f"/api/v1/namespaces/{NS}")


def _install_crds(plane: ControlPlane, files: list[Path]) -> list[str]:
    """Creates the CRDs in `files` that are missing, waits until they are served, and
    returns the names of those it created."""
    created = []
    for path in files:
        for crd in yaml.safe_load_all(path.read_text()):
            status, body = _call(plane, "POST", CRDS, crd)
            if status == 409:  # already there (the e2e tests install the chart's)
                continue
            assert status == 200, body
            created.append(crd["metadata"]["name"])
    deadline = time.monotonic() + 30
    while not all(_established(plane, name) for name in created):
        assert time.monotonic() < deadline, f"{created} were not established in 30 s"
        time.sleep(0.2)
    return created


def test_auto_follows_the_apis_the_cluster_serves(cluster: Cluster) -> None:
    assert cluster.kinds_before.isdisjoint(KINDS), cluster.kinds_before
    after = _render(cluster.plane, {})
    kinds = {d["kind"] for d in after}
    # ServiceMonitors and the PrometheusRule are `auto`; PodMonitors stay off
    # (nothing scraped twice) and the HTTPRoute needs a Gateway named.
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    assert kinds.isdisjoint({"PodMonitor", "HTTPRoute"})
    assert {d["metadata"]["name"] for d in after if d["kind"] == "Service"} >= {
        "sb-switchboard-edge-metrics",
        "sb-switchboard-operator-metrics",
    }
    # Switched off explicitly, they stay off even where the API is served.
    off = {"metrics": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}}}
    assert {d["kind"] for d in _render(cluster.plane, off)}.isdisjoint(KINDS)


def _create(plane: ControlPlane, doc: Doc) -> tuple[int, Any]:
    doc["metadata"]["namespace"] = NS
    return _call(plane, "POST", _path(doc) + "?dryRun=All&fieldValidation=Strict", doc)


@pytest.mark.parametrize("value_set", ["monitoring", "gateway", "default"])
def test_the_api_server_accepts_every_object_strictly(cluster: Cluster, value_set: str) -> None:
    docs = [d for d in _render(cluster.plane, VALUE_SETS[value_set]) if d["kind"] in KINDS]
    assert docs
    for doc in docs:
        status, body = _create(cluster.plane, doc)
        assert status == 200, f"{doc['kind']}/{doc['metadata']['name']}: {body}"


def test_the_api_server_refuses_broken_objects(cluster: Cluster) -> None:
    """The checks above can fail: a CEL rule and a strict unknown field are refused."""
    docs = _render(cluster.plane, VALUE_SETS["gateway"])
    route = next(d for d in docs if d["kind"] == "HTTPRoute")
    route["spec"]["rules"][0]["timeouts"] = {"request": "10s", "backendRequest": "20s"}
    status, body = _create(cluster.plane, route)
    assert status == 422, body
    assert "backendRequest timeout cannot be longer than request timeout" in body["message"]

    docs = _render(cluster.plane, VALUE_SETS["monitoring"])
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrapeTimout"] = "10s"
    status, body = _create(cluster.plane, monitor)
    assert status == 400, body  # strict decoding: an unknown field is a bad request
    assert 'unknown field "spec.endpoints[0].scrapeTimout"' in body["message"], body
