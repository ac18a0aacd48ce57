"""What the chart does not model, a platform team can still add, and the schema
accepts it: pod and container securityContext overrides (OpenShift's random UIDs:
no runAsUser at all), extra volumes and mounts, sidecars, init containers, envFrom,
probe timings and handlers, update strategies; for edges, operator and NATS.
tests/chart/test_manifests.py validates the same value set with kubernetes-validate."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.chart.render import (
    Doc,
    Values,
    container,
    docs_of,
    find,
    parse,
    pod_specs,
    render,
)

WORKLOADS = {"edge": ("Deployment", "-edge"), "operator": ("Deployment", "-operator")}
WORKLOADS["nats"] = ("StatefulSet", "-nats")


def _workload(docs: list[Doc], component: str) -> tuple[Doc, Doc, Doc]:
    kind, suffix = WORKLOADS[component]
    workload = find(docs, kind, suffix)
    spec = workload["spec"]["template"]["spec"]
    return workload, spec, container(spec, component)


@pytest.mark.parametrize("component", WORKLOADS)
def test_defaults_stay_locked_down(component: str) -> None:
    _, spec, main = _workload(docs_of("default"), component)
    uid = 1000 if component == "nats" else 10001
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert main["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert [c["name"] for c in spec["containers"]] == [component]
    assert "initContainers" not in spec


def test_openshift_random_uids_render_no_uid_anywhere() -> None:
    """runAsUser, runAsGroup and fsGroup set to null are gone from every pod the
    chart makes (edge, operator, NATS, the cleanup hook, the helm test)."""
    docs = docs_of("escape-hatches")
    for name, spec in pod_specs(docs):
        context = spec["securityContext"]
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(context), name
        assert context["runAsNonRoot"] is True, name
        for c in spec["containers"]:
            if c["name"] != "sidecar":
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, name


@pytest.mark.parametrize("component", WORKLOADS)
def test_volumes_sidecars_and_init_containers_are_added(component: str) -> None:
    _, spec, main = _workload(docs_of("escape-hatches"), component)
    assert spec["volumes"][-1] == {"name": "extra", "configMap": {"name": "extra"}}
    assert main["volumeMounts"][-1] == {
        "name": "extra",
        "mountPath": "/etc/extra",
        "readOnly": True,
    }
    assert [c["name"] for c in spec["containers"]] == [component, "sidecar"]
    assert [c["name"] for c in spec["initContainers"]] == ["init"]
    # The chart's own volumes and mounts are all still there.
    _, default_spec, default_main = _workload(docs_of("default"), component)
    assert default_spec["volumes"] == spec["volumes"][:-1]
    assert default_main["volumeMounts"] == main["volumeMounts"][:-1]


def test_env_from_comes_after_the_charts_own() -> None:
    docs = docs_of("escape-hatches")
    _, _, edge = _workload(docs, "edge")
    assert edge["envFrom"][0]["configMapRef"]["name"] == "sb-switchboard-edge"
    assert edge["envFrom"][1:] == [{"secretRef": {"name": "edge-extra-env"}}]
    _, _, operator = _workload(docs, "operator")
    assert operator["envFrom"][1:] == [{"configMapRef": {"name": "operator-extra-env"}}]


def test_probes_take_new_timings_handlers_or_none() -> None:
    docs = docs_of("escape-hatches")
    _, _, edge = _workload(docs, "edge")
    # Timings change, the chart's handler stays.
    assert edge["readinessProbe"] == {
        "httpGet": {"path": "/readyz", "port": "admin"},
        "periodSeconds": 3,
        "timeoutSeconds": 1,
        "failureThreshold": 2,
    }
    assert edge["livenessProbe"]["periodSeconds"] == 15
    assert edge["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "startupProbe" not in edge  # null: off
    _, _, operator = _workload(docs, "operator")
    assert operator["livenessProbe"]["failureThreshold"] == 4
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # A handler of one's own replaces the chart's.
    _, _, nats = _workload(docs, "nats")
    assert nats["readinessProbe"] == {
        "tcpSocket": {"port": "nats"},
        "periodSeconds": 5,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


def test_strategies() -> None:
    docs = docs_of("escape-hatches")
    edge, _, _ = _workload(docs, "edge")
    assert edge["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "10%"},
    }
    operator, _, _ = _workload(docs, "operator")
    assert operator["spec"]["strategy"] == {"type": "Recreate"}  # no rollingUpdate left
    nats, _, _ = _workload(docs, "nats")
    assert nats["spec"]["updateStrategy"] == {"type": "OnDelete"}


INVALID: list[tuple[str, Values, str]] = [
    ("probe typo", {"edge": {"readinessProbe": {"periodSecond": 3}}}, "'periodSecond'"),
    ("probe type", {"nats": {"livenessProbe": {"periodSeconds": "10s"}}}, "periodSeconds"),
    ("strategy type", {"edge": {"strategy": {"type": "BlueGreen"}}}, "/edge/strategy/type"),
    (
        "statefulset strategy",
        {"nats": {"updateStrategy": {"type": "Recreate"}}},
        "/nats/updateStrategy/type",
    ),
    (
        "surge",
        {"edge": {"strategy": {"rollingUpdate": {"maxSurge": "lots"}}}},
        "maxSurge",
    ),
    ("volumes", {"operator": {"extraVolumes": {"name": "x"}}}, "/operator/extraVolumes"),
    ("sidecars", {"edge": {"extraContainers": ["busybox"]}}, "/edge/extraContainers/0"),
    ("security context", {"nats": {"podSecurityContext": "restricted"}}, "podSecurityContext"),
    ("envFrom on nats", {"nats": {"envFrom": []}}, "'envFrom'"),
    ("admin port", {"edge": {"adminPort": 70000}}, "/edge/adminPort"),
    ("the old metrics port", {"edge": {"metricsPort": 9090}}, "'metricsPort'"),
]


@pytest.mark.parametrize(("values", "key"), [pytest.param(v, k, id=n) for n, v, k in INVALID])
def test_bad_escape_hatches_are_refused_naming_the_key(values: Values, key: str) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert key in str(refused.value), str(refused.value)


def test_a_probe_set_to_null_is_accepted_by_the_schema() -> None:
    docs = parse(render({"operator": {"livenessProbe": None}}))
    _, _, operator = _workload(docs, "operator")
    assert "livenessProbe" not in operator
