"""The operator's RBAC grants every permission it needs (switchboard_operator/rbac.py
lists each API call the operator and kopf make) and nothing more, each rule with
its reason; the control-plane tests later run the operator under this Role."""

from __future__ import annotations

import ast

import pytest

from switchboard_operator.cleanup import KINDS as CLEANUP_KINDS
from switchboard_operator.models import GROUP
from switchboard_operator.rbac import REQUIRED
from tests.chart.crd import custom_object_errors
from tests.chart.render import (
    NAMESPACE,
    ROOT,
    Doc,
    container_env,
    docs_of,
    find,
    find_all,
    rendered_set,
)

Grant = tuple[str, str, str]  # (api group, resource, verb)

# Beyond REQUIRED, and why.
JUSTIFIED: dict[str, set[Grant]] = {
    "default": set(),
    # Watching every namespace, kopf peers through a cluster-scoped ClusterKopfPeering.
    "cluster-wide": {
        ("kopf.dev", "clusterkopfpeerings", verb) for verb in ("get", "list", "watch", "patch")
    },
}


def _required() -> set[Grant]:
    return {(p.api_group, p.resource, verb) for p in REQUIRED for verb in p.verbs}


def _granted(role: Doc) -> set[Grant]:
    granted: set[Grant] = set()
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    granted.add((group, resource, verb))
    return granted


def _role(name: str) -> Doc:
    kind = "ClusterRole" if name == "cluster-wide" else "Role"
    return find(docs_of(name), kind, "-operator")


@pytest.mark.parametrize("name", JUSTIFIED)
def test_role_grants_every_required_permission(name: str) -> None:
    missing = _required() - _granted(_role(name))
    assert not missing, f"the chart's {name} Role lacks {sorted(missing)}"


@pytest.mark.parametrize("name", JUSTIFIED)
def test_role_grants_nothing_else(name: str) -> None:
    extra = _granted(_role(name)) - _required() - JUSTIFIED[name]
    assert not extra, f"unjustified grants: {sorted(extra)}"


@pytest.mark.parametrize("name", JUSTIFIED)
def test_every_rule_says_why(name: str) -> None:
    text = next(t for path, t in rendered_set(name).items() if path.endswith("operator/rbac.yaml"))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rules = [i for i, line in enumerate(lines) if line.startswith("- apiGroups:")]
    assert len(rules) == len(_role(name)["rules"])
    for i in rules:
        assert lines[i - 1].startswith("# ") and len(lines[i - 1]) > 10, lines[i]


def test_each_required_reason_is_the_rules_comment() -> None:
    text = rendered_set("default")["switchboard/templates/operator/rbac.yaml"]
    for permission in REQUIRED:
        assert f"# {permission.why}\n" in text, permission


@pytest.mark.parametrize("name", JUSTIFIED)
def test_binding_gives_the_role_to_the_operator_only(name: str) -> None:
    docs = docs_of(name)
    role = _role(name)
    binding = find(docs, f"{role['kind']}Binding", "-operator")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role["kind"],
        "name": role["metadata"]["name"],
    }
    operator = find(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": operator["serviceAccountName"], "namespace": NAMESPACE}
    ]
    bindings = find_all(docs, "RoleBinding") + find_all(docs, "ClusterRoleBinding")
    assert bindings == [binding]


def test_namespaced_by_default_cluster_wide_on_request() -> None:
    docs = docs_of("default")
    assert find_all(docs, "ClusterRole") == []
    operator = find(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    env = container_env(docs, operator["containers"][0])
    assert env["SB_OPERATOR_NAMESPACE"] == NAMESPACE
    wide = docs_of("cluster-wide")
    assert find_all(wide, "Role") == []
    wide_operator = find(wide, "Deployment", "-operator")["spec"]["template"]["spec"]
    assert "SB_OPERATOR_NAMESPACE" not in container_env(wide, wide_operator["containers"][0])


@pytest.mark.parametrize(
    ("name", "kind"), [("default", "KopfPeering"), ("cluster-wide", "ClusterKopfPeering")]
)
def test_the_peering_object_exists_for_the_operators_peering_name(name: str, kind: str) -> None:
    docs = docs_of(name)
    operator = find(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    env = container_env(docs, operator["containers"][0])
    (peering,) = find_all(docs, kind)
    assert peering["metadata"]["name"] == env["SB_OPERATOR_PEERING"]
    assert env["SB_OPERATOR_STANDALONE"] == "false"
    assert custom_object_errors(peering) == []
    assert find(docs, "Deployment", "-operator")["spec"]["replicas"] == 2


KUBE = ROOT / "operator" / "switchboard_operator" / "kube.py"
# The official client's API classes kube.py uses, by their API group ("{}": ours).
_API_GROUPS = {"AppsV1Api": "apps", "CoreV1Api": "", "CustomObjectsApi": "{}"}
_CLIENT_VERBS = {"read": "get", "list": "list", "patch": "patch", "delete": "delete"}
_CLIENT_VERBS |= {"create": "create", "replace": "update"}


def _kube_calls() -> list[tuple[str, str]]:
    """(API class, client method) of every call switchboard_operator.kube makes: the
    typed methods (`api.list_namespaced_pod`) it hands to `_call` or `_json`."""
    calls = []
    for function in ast.walk(ast.parse(KUBE.read_text())):
        if not isinstance(function, ast.AsyncFunctionDef | ast.FunctionDef):
            continue
        classes = [
            node.func.attr
            for node in ast.walk(function)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr.endswith("Api")
        ]
        methods = [
            call.args[1].attr
            for call in ast.walk(function)
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in ("_call", "_json")
            and len(call.args) > 1
            and isinstance(call.args[1], ast.Attribute)
        ]
        if classes or methods:
            assert len(classes) == len(methods) == 1, f"{function.name}: teach this test its calls"
            calls.append((classes[0], methods[0]))
    return calls


def _permissions(api: str, method: str) -> set[Grant]:
    """The RBAC (group, resource, verb) grants a client method needs, by the client's
    naming (`<verb>_namespaced_<kind>[_<subresource>]`). A custom object is any of
    the kinds `switchboard cleanup` handles."""
    verb, _, rest = method.partition("_namespaced_")
    kind, _, subresource = rest.partition("_")
    resources = CLEANUP_KINDS if rest == "custom_object" else (f"{kind}s",)
    suffix = f"/{subresource}" if subresource and rest != "custom_object" else ""
    group = GROUP if _API_GROUPS[api] == "{}" else _API_GROUPS[api]
    return {(group, resource + suffix, _CLIENT_VERBS[verb]) for resource in resources}


def test_the_operators_own_api_calls_are_granted() -> None:
    calls = _kube_calls()
    assert len(calls) >= 4, calls  # deployment, scale, pods, annotate
    needed = set().union(*(_permissions(api, method) for api, method in calls))
    assert ("", "pods", "list") in needed and ("apps", "deployments", "get") in needed
    assert ("apps", "deployments/scale", "patch") in needed
    assert (GROUP, "edgepools", "delete") in needed
    assert needed <= _required(), sorted(needed - _required())
    for name in JUSTIFIED:
        assert needed <= _granted(_role(name)), name
