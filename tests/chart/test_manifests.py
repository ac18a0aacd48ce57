"""Every value set renders, lints clean in strict mode, and every object it renders is
one the API server accepts: kubernetes-validate --strict for built-in kinds (two
Kubernetes versions), the CRD's own schema and rules for custom objects."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml

from switchboard.contract.channel_config import load_manifests
from tests.chart.crd import crds, custom_object_errors, is_custom
from tests.chart.render import (
    CHART,
    DEPLOY,
    KUBE_VERSIONS,
    NAMESPACE,
    VALUE_SETS,
    docs_of,
    find_all,
    parse,
    render,
)


def _kube_errors(doc: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema: {exc.message}"]
    return []


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict_is_clean(name: str, kube: str) -> None:
    report = helm.lint(
        CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{kube}.0"
    )
    assert report["messages"] == [], report
    assert report["errors"] == [], report


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_is_valid(name: str, kube: str) -> None:
    docs = docs_of(name)
    assert len(docs) > 10
    problems = []
    for doc in docs:
        errors = custom_object_errors(doc) if is_custom(doc) else _kube_errors(doc, kube)
        problems += [f"{doc['kind']}/{doc['metadata']['name']}: {e}" for e in errors]
    assert problems == []


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_crds_are_valid(kube: str) -> None:
    with helm.Chart.load(CHART) as chart:
        shipped = [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]
    kinds = {doc["spec"]["names"]["kind"] for doc in shipped}
    assert kinds == {"Channel", "EdgePool", "KopfPeering", "ClusterKopfPeering"}
    for doc in shipped:
        assert _kube_errors(doc, kube) == [], doc["metadata"]["name"]


def test_the_validators_catch_errors() -> None:
    """A check that cannot fail proves nothing: break an object of each kind."""
    docs = docs_of("default")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    assert _kube_errors(deployment, KUBE_VERSIONS[0])
    pool = next(d for d in docs if d["kind"] == "EdgePool")
    pool["spec"]["minReplicas"], pool["spec"]["maxReplicas"] = 9, 3
    assert custom_object_errors(pool) == [".spec: minReplicas > maxReplicas"]
    channel = next(d for d in docs if d["kind"] == "Channel")
    channel["spec"]["history"] = {"ttl": "a week"}
    assert custom_object_errors(channel)


def test_every_custom_object_kind_has_its_crd() -> None:
    for name in VALUE_SETS:
        for doc in docs_of(name):
            if doc["apiVersion"].split("/")[0].endswith(("switchboard.dev", "kopf.dev")):
                assert is_custom(doc), doc["kind"]
    assert len(crds()) == 4


def _examples() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}#{i}", doc)
        for path in sorted((DEPLOY / "examples").glob("*.yaml"))
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc
    ]


def test_there_are_channel_and_edgepool_examples() -> None:
    kinds = {doc["kind"] for _, doc in _examples()}
    assert kinds == {"Channel", "EdgePool"}


@pytest.mark.parametrize(("where", "doc"), _examples(), ids=[w for w, _ in _examples()])
def test_examples_validate_against_the_crds(where: str, doc: dict[str, Any]) -> None:
    assert is_custom(doc), where
    assert custom_object_errors(doc) == []


def test_channel_examples_load_in_dev_mode_too() -> None:
    """`switchboard channel apply -f` (dev mode) reads the same files as kubectl."""
    for path in sorted((DEPLOY / "examples").glob("channel-*.yaml")):
        assert list(load_manifests(path.read_text())), path.name


def test_the_charts_example_channels_are_the_documented_ones() -> None:
    documented = {
        doc["metadata"]["name"]: doc["spec"]
        for doc in yaml.safe_load_all((DEPLOY / "examples" / "channel-chat.yaml").read_text())
    }
    rendered = {d["metadata"]["name"]: d["spec"] for d in find_all(docs_of("default"), "Channel")}
    assert rendered == documented
    assert find_all(docs_of("no-examples"), "Channel") == []


def test_extra_channels_are_rendered_as_given() -> None:
    spec = {"history": {"size": 1000, "ttl": "1h"}, "publish": {"clients": False}}
    docs = parse(render({"channels": {"examples": False, "extra": {"orders": spec}}}))
    (channel,) = find_all(docs, "Channel")
    assert channel["metadata"]["name"] == "orders"
    assert channel["spec"] == spec


def test_names_fit_with_the_longest_release_name() -> None:
    release = "r" * 53  # Helm's limit
    docs = parse(render({}, release=release))
    for doc in docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 63, name
        if doc["kind"] == "StatefulSet":
            # Its pods carry controller-revision-hash: <name>-<10 characters>.
            assert len(name) <= 52, name
        for value in doc["metadata"].get("labels", {}).values():
            assert len(value) <= 63, value


def test_the_published_schemas_catch_errors() -> None:
    """Objects of APIs the chart does not define are checked too (tests/chart/thirdparty)."""
    monitor = next(d for d in docs_of("monitoring") if d["kind"] == "ServiceMonitor")
    assert custom_object_errors(monitor) == []
    monitor["spec"]["endpoints"][0]["interval"] = "soon"
    assert custom_object_errors(monitor)
    route = next(d for d in docs_of("gateway") if d["kind"] == "HTTPRoute")
    assert custom_object_errors(route) == []
    route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Glob"
    assert custom_object_errors(route)
    rule = next(d for d in docs_of("monitoring") if d["kind"] == "PrometheusRule")
    del rule["spec"]["groups"][0]["name"]
    assert custom_object_errors(rule)
