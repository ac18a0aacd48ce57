"""What the chart does for a security review (docs/security.md): who reaches NATS
and the edges' admin port, who gets which NATS credential, and what stays closed."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.chart.render import Doc, docs_of, find, find_all, parse, pod_specs, render


def _pod_labels(docs: list[Doc]) -> dict[str, dict[str, str]]:
    """Labels of each workload's pods, by workload name."""
    labels = {d["metadata"]["name"]: d["metadata"]["labels"] for d in docs if d["kind"] == "Pod"}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            labels[d["metadata"]["name"]] = d["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(peer: dict[str, Any], labels: dict[str, str], same_namespace: bool) -> bool:
    """Whether a NetworkPolicy peer admits a pod with `labels` (matchLabels only)."""
    if "namespaceSelector" not in peer and not same_namespace:
        return False
    wanted = peer.get("podSelector", {}).get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def _admitted(policy: Doc, port: int) -> list[dict[str, Any]]:
    return [
        peer
        for rule in policy["spec"]["ingress"]
        if any(p["port"] == port for p in rule.get("ports", []))
        for peer in rule.get("from", [])
    ]


def test_nats_clients_are_edges_operator_helm_test_and_labelled_backends_only() -> None:
    docs = parse(render({}))
    policy = find(docs, "NetworkPolicy", "-nats")
    peers = _admitted(policy, 4222)
    admitted = {
        name
        for name, labels in _pod_labels(docs).items()
        if any(_selects(p, labels, same_namespace=True) for p in peers)
    }
    assert admitted == {
        "sb-switchboard-edge",
        "sb-switchboard-operator",
        "sb-switchboard-test-roundtrip",
    }
    backend = {"switchboard.dev/nats-client": "backend", "app": "orders"}
    assert any(_selects(p, backend, same_namespace=False) for p in peers)
    assert not any(_selects(p, {"app": "orders"}, same_namespace=False) for p in peers)
    # routes: NATS servers only; monitoring: nobody unless namespaces are named
    routes = _admitted(policy, 6222)
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in routes] == [
        "nats"
    ]
    assert _admitted(policy, 8222) == []
    operator = find(docs, "NetworkPolicy", "-operator")
    assert operator["spec"]["ingress"] == []
    # the selectors match the pods as rendered (a renamed label would open nothing)
    nats_pods = _pod_labels(docs)["sb-switchboard-nats"]
    assert all(
        nats_pods.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items()
    )


def test_monitoring_namespaces_reach_nats_monitoring_and_the_operator() -> None:
    docs = parse(render({"networkPolicy": {"monitoringNamespaces": ["monitoring"]}}))
    for suffix, port in (("-nats", 8222), ("-operator", None)):
        policy = find(docs, "NetworkPolicy", suffix)
        rules = policy["spec"]["ingress"]
        peers = _admitted(policy, port) if port else [p for r in rules for p in r["from"]]
        (peer,) = peers
        (expr,) = peer["namespaceSelector"]["matchExpressions"]
        assert expr == {
            "key": "kubernetes.io/metadata.name",
            "operator": "In",
            "values": ["monitoring"],
        }


def test_network_policies_can_be_turned_off() -> None:
    assert find_all(parse(render({"networkPolicy": {"enabled": False}})), "NetworkPolicy") == []


def test_each_process_gets_only_its_own_nats_password() -> None:
    docs = docs_of("default")
    secret = find(docs, "Secret", "-nats-credentials")
    assert set(secret["data"]) == {"edge-password", "operator-password", "backend-password"}
    keys: dict[str, set[str]] = {}
    for name, spec in pod_specs(docs):
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef", {})
                if ref.get("name") == secret["metadata"]["name"]:
                    keys.setdefault(name, set()).add(ref["key"])
    assert keys == {
        "sb-switchboard-edge": {"edge-password"},
        "sb-switchboard-operator": {"operator-password"},
        "sb-switchboard-test-roundtrip": {"backend-password"},
        "sb-switchboard-nats": {"edge-password", "operator-password", "backend-password"},
    }


def _sources(policy: Doc, port: int) -> list[dict[str, Any]] | None:
    """The peers a policy admits on `port`; None when a rule without `from` admits
    everyone."""
    peers: list[dict[str, Any]] = []
    for rule in policy["spec"]["ingress"]:
        if not any(p["port"] == port for p in rule.get("ports", [])):
            continue
        if not rule.get("from"):
            return None
        peers += rule["from"]
    return peers


def test_edges_take_clients_from_anywhere_and_admin_calls_from_the_namespace() -> None:
    docs = parse(render({}))
    policy = find(docs, "NetworkPolicy", "-edge")
    edge = find(docs, "Deployment", "-edge")
    labels = edge["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    ports = {
        p["name"]: p["containerPort"]
        for p in edge["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert _sources(policy, ports["http"]) is None  # the client port is public by design
    # The admin port: pods of the release's namespace (a podSelector without a
    # namespaceSelector), nobody from another namespace.
    assert _sources(policy, ports["admin"]) == [{"podSelector": {}}]
    admitted = _sources(policy, ports["admin"]) or []
    assert any(_selects(p, {"app": "orders"}, same_namespace=True) for p in admitted)
    assert not any(_selects(p, {"app": "orders"}, same_namespace=False) for p in admitted)
    # No other port is open.
    assert {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]} == set(ports.values())


def test_the_admin_port_admits_the_listed_peers_and_monitoring() -> None:
    docs = docs_of("server-api")
    policy = find(docs, "NetworkPolicy", "-edge")
    peers = _sources(policy, 9090)
    assert peers is not None
    listed = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "orders"}},
            "podSelector": {"matchLabels": {"app": "orders"}},
        },
        {"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.1.0/24"]}},
    ]
    assert peers[:2] == listed
    (expr,) = peers[2]["namespaceSelector"]["matchExpressions"]
    assert expr["values"] == ["monitoring"]
    assert len(peers) == 3


def test_an_empty_admin_list_opens_the_admin_port_to_nobody() -> None:
    """A rule without peers would admit everyone: with none listed there is no rule."""
    docs = parse(render({"networkPolicy": {"admin": {"from": []}}, "edge": {"adminPort": 9100}}))
    policy = find(docs, "NetworkPolicy", "-edge")
    assert _sources(policy, 9100) == []
    assert _sources(policy, 8080) is None
    monitored = parse(
        render({"networkPolicy": {"admin": {"from": []}, "monitoringNamespaces": ["mon"]}})
    )
    (peer,) = _sources(find(monitored, "NetworkPolicy", "-edge"), 9090) or []
    assert peer["namespaceSelector"]["matchExpressions"][0]["values"] == ["mon"]


@pytest.mark.parametrize(
    ("peers", "key"),
    [
        ([{"podSelectr": {}}], "podSelectr"),
        ([{}], "/networkPolicy/admin/from/0"),
        ([{"ipBlock": {"except": ["10.0.0.0/8"]}}], "cidr"),
        ({"podSelector": {}}, "/networkPolicy/admin/from"),
    ],
)
def test_bad_admin_peers_are_refused_naming_the_key(peers: object, key: str) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render({"networkPolicy": {"admin": {"from": peers}}})
    assert key in str(refused.value), str(refused.value)
