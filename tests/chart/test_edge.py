"""The edge Deployment: drains are never cut short, disruptions never take every edge,
the settings in values reach the process intact, and clients get in through the
Service or Ingress."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from edge.settings import ENV_PREFIX as EDGE_PREFIX
from edge.settings import EdgeSettings
from switchboard.cli.chart_schema import values_schema
from switchboard.contract.settings import load_settings
from switchboard_operator.settings import ENV_PREFIX as OPERATOR_PREFIX
from switchboard_operator.settings import OperatorSettings
from tests.chart.render import (
    NAMESPACE,
    VALUE_SETS,
    Doc,
    container,
    container_env,
    docs_of,
    find,
    find_all,
    mount_files,
    parse,
    pod_specs,
    render,
    rendered_set,
)


def _edge(docs: list[Doc]) -> tuple[Doc, Doc]:
    deployment = find(docs, "Deployment", "-edge")
    return deployment, container(deployment["spec"]["template"]["spec"], "edge")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_grace_period_exceeds_the_drain_timeout(name: str) -> None:
    docs = docs_of(name)
    deployment, edge = _edge(docs)
    drain_timeout = float(container_env(docs, edge)["SB_EDGE_DRAIN_TIMEOUT_S"])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain_timeout + 5


@pytest.mark.parametrize(("timeout", "margin"), [(0, 5), (20, 10), (300, 30), (3600, 60)])
def test_drain_timeout_and_grace_come_from_one_value(timeout: int, margin: int) -> None:
    docs = parse(
        render(
            {
                "edgePool": {"drain": {"timeoutSeconds": timeout}},
                "edge": {"drainGraceMarginSeconds": margin},
            }
        )
    )
    deployment, edge = _edge(docs)
    assert container_env(docs, edge)["SB_EDGE_DRAIN_TIMEOUT_S"] == str(timeout)
    assert find(docs, "EdgePool")["spec"]["drain"]["timeoutSeconds"] == timeout
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == (
        timeout + margin
    )


def test_prestop_starts_the_drain_on_the_edge_port() -> None:
    docs = parse(render({"edge": {"port": 9000}}))
    _, edge = _edge(docs)
    assert edge["lifecycle"]["preStop"]["exec"]["command"] == [
        "switchboard",
        "drain",
        "--port",
        "9000",
    ]
    assert container_env(docs, edge)["SB_EDGE_PORT"] == "9000"
    assert edge["ports"] == [
        {"name": "http", "containerPort": 9000, "protocol": "TCP"},
        {"name": "admin", "containerPort": 9090, "protocol": "TCP"},
    ]


@pytest.mark.parametrize("admin_port", [9090, 8081])
def test_probes_ask_the_admin_port(admin_port: int) -> None:
    """The client port serves only /v1/*: health and readiness are on the admin port,
    the one the edge is told to listen on."""
    docs = parse(render({"edge": {"adminPort": admin_port}}))
    _, edge = _edge(docs)
    env = container_env(docs, edge)
    assert env["SB_EDGE_ADMIN_PORT"] == str(admin_port)
    ports = {p["name"]: p["containerPort"] for p in edge["ports"]}
    assert ports == {"http": int(env["SB_EDGE_PORT"]), "admin": admin_port}
    assert edge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert edge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert edge["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}


def test_the_admin_port_must_differ_from_the_client_port() -> None:
    with pytest.raises(helm.HelmError) as refused:
        render({"edge": {"port": 9000, "adminPort": 9000}})
    assert "edge.adminPort (9000) equals edge.port" in str(refused.value)
    for value, key in ((0, "/edge/adminPort"), (65536, "/edge/adminPort"), ("x", "adminPort")):
        with pytest.raises(helm.HelmError) as refused:
            render({"edge": {"adminPort": value}})
        assert key in str(refused.value), str(refused.value)


def test_rollouts_surge_and_never_drop_below_the_current_edges() -> None:
    deployment, _ = _edge(docs_of("default"))
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_pod_name_comes_from_the_downward_api() -> None:
    _, edge = _edge(docs_of("default"))
    (item,) = [e for e in edge["env"] if e["name"] == "SB_EDGE_POD_NAME"]
    assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_pdb_never_allows_zero_available_edges(name: str) -> None:
    docs = docs_of(name)
    deployment, _ = _edge(docs)
    pdb = find(docs, "PodDisruptionBudget", "-edge")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert "maxUnavailable" not in pdb["spec"]
    minimum = pdb["spec"]["minAvailable"]
    if isinstance(minimum, str):
        assert minimum.endswith("%")
        assert int(minimum[:-1]) > 0  # rounds up: at least one pod of any number
    else:
        assert minimum >= 1


@pytest.mark.parametrize("name", VALUE_SETS)
def test_containers_run_as_non_root_read_only(name: str) -> None:
    specs = pod_specs(docs_of(name))
    assert specs
    for pod, spec in specs:
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True, pod
        # No runAsUser at all is OpenShift's case (the platform picks a non-root UID).
        assert context.get("runAsUser", 1) > 0, pod
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, pod
        for c in spec["containers"] + spec.get("initContainers", []):
            if c["name"] in ("sidecar", "init"):  # the user's own (escape-hatches)
                continue
            own = c["securityContext"]
            assert own.get("runAsNonRoot", True) is True, (pod, c["name"])
            assert own.get("runAsUser", 1) != 0, (pod, c["name"])
            assert own["allowPrivilegeEscalation"] is False, (pod, c["name"])
            assert own["readOnlyRootFilesystem"] is True, (pod, c["name"])
            assert own["capabilities"]["drop"] == ["ALL"], (pod, c["name"])


def test_edges_have_no_api_token() -> None:
    docs = docs_of("default")
    deployment, _ = _edge(docs)
    spec = deployment["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    account = find(docs, "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


def test_the_operator_owns_replicas_when_the_edgepool_is_on() -> None:
    deployment, _ = _edge(docs_of("default"))
    assert "replicas" not in deployment["spec"]
    pool = find(docs_of("default"), "EdgePool")
    assert pool["spec"]["deployment"] == deployment["metadata"]["name"]
    assert find_all(docs_of("default"), "HorizontalPodAutoscaler") == []
    fixed, _ = _edge(docs_of("fixed-replicas"))
    assert fixed["spec"]["replicas"] == 1
    assert find_all(docs_of("fixed-replicas"), "EdgePool") == []


def test_anti_affinity_spreads_edges_over_nodes() -> None:
    deployment, _ = _edge(docs_of("default"))
    spec = deployment["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    hard, _ = _edge(parse(render({"edge": {"podAntiAffinity": "hard"}})))
    assert hard["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    spread, _ = _edge(docs_of("otel"))
    (constraint,) = spread["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert constraint["labelSelector"]["matchLabels"] == selector


def test_config_changes_roll_the_pods() -> None:
    before, _ = _edge(docs_of("default"))
    after, _ = _edge(parse(render({"edge": {"config": {"max_connections": 123}}})))
    key = "checksum/config"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )


def _example_value(schema: dict[str, Any]) -> Any:
    """A valid value different from the default, for any setting's schema."""
    default = schema.get("default")
    if "anyOf" in schema:
        return _example_value(next(o for o in schema["anyOf"] if o.get("type") != "null"))
    if "enum" in schema:
        return next(v for v in reversed(schema["enum"]) if v != default)
    kind = schema["type"]
    if kind == "object":
        return {k: _example_value(s) for k, s in schema["properties"].items()}
    if kind == "array":
        items = schema["items"]
        if "enum" in items:
            return [items["enum"][-1]]
        pattern = re.compile(items.get("pattern", ".*"))
        return [v for v in ("https://a.example", "x*", "example") if pattern.search(v)]
    if kind == "boolean":
        return not default
    if kind == "integer":
        return (default if default is not None else schema.get("minimum", 0)) + 3
    if kind == "number":
        return (default if default is not None else 1.0) + 2.5
    assert kind == "string" and "pattern" not in schema, schema
    return "https://idp.example/jwks.json" if schema.get("format") == "uri" else "example"


def _settings_from_pod(
    docs: list[Doc],
    kind: str,
    suffix: str,
    name: str,
    model: Any,
    prefix: str,
    monkeypatch: Any,
    files_root: Path | None = None,
) -> Any:
    """The settings the process would load in the pod (with `files_root`: its Secret
    volumes mounted there, so files the settings read must exist)."""
    spec = find(docs, kind, suffix)["spec"]["template"]["spec"]
    env = container_env(docs, container(spec, name))
    if files_root is not None:
        env = mount_files(spec, container(spec, name), env, files_root)
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(prefix)]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        return load_settings(model, prefix, {})


def test_every_edge_setting_reaches_the_edge_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = values_schema()["properties"]["edge"]["properties"]["config"]
    config = _example_value(schema)
    docs = parse(render({"edge": {"config": config}}))
    settings = _settings_from_pod(
        docs, "Deployment", "-edge", "edge", EdgeSettings, EDGE_PREFIX, monkeypatch
    )
    dumped = settings.model_dump(mode="json")
    assert {k: dumped[k] for k in config} == config
    # And what the chart sets itself:
    assert settings.pod_name == "pod-0"
    assert settings.nats_url == f"nats://sb-switchboard-nats.{NAMESPACE}.svc:4222"
    assert settings.jwt_secret and settings.resume_secret
    assert (settings.port, settings.admin_port) == (8080, 9090)
    assert settings.api_keys_file is None  # no keys: the server API answers 503


def test_every_operator_setting_reaches_the_operator_intact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = values_schema()["properties"]["operator"]["properties"]["config"]
    config = _example_value(schema)
    docs = parse(render({"operator": {"config": config}}))
    settings = _settings_from_pod(
        docs, "Deployment", "-operator", "operator", OperatorSettings, OPERATOR_PREFIX, monkeypatch
    )
    dumped = settings.model_dump(mode="json")
    assert {k: dumped[k] for k in config} == config
    assert settings.namespace == NAMESPACE
    assert settings.peering == find(docs, "KopfPeering")["metadata"]["name"]
    assert (settings.health_port, settings.metrics_port) == (8081, 9090)
    assert settings.standalone is False


@pytest.mark.parametrize("name", VALUE_SETS)
def test_edges_and_operator_start_with_the_rendered_settings(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = docs_of(name)
    _settings_from_pod(
        docs, "Deployment", "-edge", "edge", EdgeSettings, EDGE_PREFIX, monkeypatch, tmp_path
    )
    if VALUE_SETS[name].get("operator", {}).get("enabled", True):
        _settings_from_pod(
            docs,
            "Deployment",
            "-operator",
            "operator",
            OperatorSettings,
            OPERATOR_PREFIX,
            monkeypatch,
        )


def test_public_key_verification_mounts_the_key_file() -> None:
    docs = docs_of("public-key")
    deployment, edge = _edge(docs)
    env = container_env(docs, edge)
    assert "SB_EDGE_JWT_SECRET" not in env
    path = env["SB_EDGE_JWT_PUBLIC_KEY_FILE"]
    (mount,) = [m for m in edge["volumeMounts"] if m["name"] == "jwt"]
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "jwt"]
    (item,) = volume["secret"]["items"]
    assert path == f"{mount['mountPath']}/{item['path']}"
    secret = find(docs, "Secret", volume["secret"]["secretName"])
    assert item["key"] in secret["data"]


def test_server_api_keys_are_mounted_from_the_named_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = docs_of("server-api")
    deployment, edge = _edge(docs)
    spec = deployment["spec"]["template"]["spec"]
    path = container_env(docs, edge)["SB_EDGE_API_KEYS_FILE"]
    (mount,) = [m for m in edge["volumeMounts"] if m["name"] == "api-keys"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "switchboard-api-keys"
    assert volume["secret"]["items"] == [{"key": "keys.txt", "path": "keys.txt"}]
    assert path == f"{mount['mountPath']}/keys.txt"
    # The edge reads the keys the kubelet would mount there.
    env = mount_files(
        spec,
        edge,
        container_env(docs, edge),
        tmp_path,
        {("switchboard-api-keys", "keys.txt"): "# backends\nkey-of-the-orders-app\n"},
    )
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(EDGE_PREFIX)]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        settings = load_settings(EdgeSettings, EDGE_PREFIX, {})
    assert settings.api_keys() == ["key-of-the-orders-app"]
    # Without a Secret named: no variable, no volume (the API answers 503).
    default, default_edge = _edge(docs_of("default"))
    assert "SB_EDGE_API_KEYS_FILE" not in container_env(docs_of("default"), default_edge)
    assert "api-keys" not in [v["name"] for v in default["spec"]["template"]["spec"]["volumes"]]


def test_bad_server_api_values_are_refused_naming_the_key() -> None:
    for values, key in (
        ({"serverApi": {"key": "a/b"}}, "/edge/serverApi/key"),
        ({"serverApi": {"secret": "x"}}, "'secret'"),
        ({"config": {"api_keys_file": "/x"}}, "'api_keys_file'"),
        ({"config": {"admin_port": 1}}, "'admin_port'"),
    ):
        with pytest.raises(helm.HelmError) as refused:
            render({"edge": values})
        assert key in str(refused.value), str(refused.value)


def test_existing_secret_is_used_and_none_is_created() -> None:
    docs = docs_of("existing-secret")
    assert find_all(docs, "Secret") == []
    _, edge = _edge(docs)
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in edge["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["SB_EDGE_JWT_SECRET"] == {"name": "switchboard-keys", "key": "jwt-secret"}
    assert refs["SB_EDGE_RESUME_SECRET"] == {"name": "switchboard-keys", "key": "resume-secret"}
    assert refs["SB_EDGE_NATS_PASSWORD"] == {"name": "nats-passwords", "key": "edge-password"}


def test_given_secrets_are_stored_and_generated_ones_are_long() -> None:
    import base64

    given = {"jwtSecret": "j" * 40, "resumeSecret": "r" * 40}
    secret = find(parse(render({"auth": given})), "Secret", "-auth")
    assert base64.b64decode(secret["data"]["jwt-secret"]).decode() == "j" * 40
    assert base64.b64decode(secret["data"]["resume-secret"]).decode() == "r" * 40
    generated = find(docs_of("default"), "Secret", "-auth")
    for key in ("jwt-secret", "resume-secret"):
        assert len(base64.b64decode(generated["data"][key])) >= 32


def test_otel_settings_are_the_standard_variables() -> None:
    docs = docs_of("otel")
    _, edge = _edge(docs)
    env = container_env(docs, edge)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    assert env["OTEL_SERVICE_NAME"] == "switchboard-edge"
    attributes = dict(a.split("=", 1) for a in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    assert attributes["k8s.pod.name"] == "$(SB_EDGE_POD_NAME)"
    assert attributes["k8s.node.name"] == "$(K8S_NODE_NAME)"
    assert attributes["k8s.namespace.name"] == NAMESPACE
    assert attributes["deployment.environment"] == "test"
    assert env["K8S_NODE_NAME"] == "node-0"  # the downward API's spec.nodeName
    names = [e["name"] for e in edge["env"]]
    # $(VAR) expands only variables defined before it
    assert names.index("SB_EDGE_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert names.index("K8S_NODE_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    # the operator and the cleanup hook, each under its own service name
    operator = find(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert container_env(docs, operator)["OTEL_SERVICE_NAME"] == "switchboard-operator"
    hook = find(docs, "Job", "-operator-cleanup")["spec"]["template"]["spec"]["containers"][0]
    hook_env = container_env(docs, hook)
    assert hook_env["OTEL_SERVICE_NAME"] == "switchboard-cleanup"
    assert hook_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert "k8s.node.name=$(K8S_NODE_NAME)" in hook_env["OTEL_RESOURCE_ATTRIBUTES"]
    hook_names = [e["name"] for e in hook["env"]]
    assert hook_names.index("POD_NAME") < hook_names.index("OTEL_RESOURCE_ATTRIBUTES")
    grpc = parse(
        render({"otel": {"enabled": True, "endpoint": "http://c:4317", "protocol": "grpc"}})
    )
    _, grpc_edge = _edge(grpc)
    assert container_env(grpc, grpc_edge)["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    _, quiet = _edge(docs_of("default"))
    assert not any(k.startswith("OTEL_") for k in container_env(docs_of("default"), quiet))


def test_service_routes_to_the_edge_port() -> None:
    docs = docs_of("default")
    deployment, _ = _edge(docs)
    service = find(docs, "Service", "-edge")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "http")


def _admin_exposure(docs: list[Doc]) -> dict[str, list[object]]:
    """Every Service, Ingress and HTTPRoute port that leads to the edges' admin port
    (by the container port's name or number), by object."""
    _, edge = _edge(docs)
    admin = next(p for p in edge["ports"] if p["name"] == "admin")
    services = {s["metadata"]["name"]: s for s in find_all(docs, "Service")}
    edge_labels = find(docs, "Deployment", "-edge")["spec"]["selector"]["matchLabels"]

    def to_admin(service: Doc, port: object) -> bool:
        if service["spec"].get("selector") != edge_labels:
            return False
        for p in service["spec"]["ports"]:
            if port in (p.get("name"), p["port"]) and p["targetPort"] in (
                "admin",
                admin["containerPort"],
            ):
                return True
        return False

    exposed: dict[str, list[object]] = {}
    for service in services.values():
        for p in service["spec"]["ports"]:
            if to_admin(service, p["port"]):
                exposed.setdefault(f"Service/{service['metadata']['name']}", []).append(p["port"])
    for ingress in find_all(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                port = backend["port"].get("name", backend["port"].get("number"))
                if to_admin(services[backend["name"]], port):
                    exposed.setdefault(f"Ingress/{ingress['metadata']['name']}", []).append(port)
    for route in find_all(docs, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                if to_admin(services[ref["name"]], ref["port"]):
                    exposed.setdefault(f"HTTPRoute/{route['metadata']['name']}", []).append(
                        ref["port"]
                    )
    return exposed


@pytest.mark.parametrize("name", VALUE_SETS)
def test_only_the_admin_and_metrics_services_carry_the_admin_port(name: str) -> None:
    """The client Service, the Ingress and the HTTPRoute never lead to the admin port;
    the admin Service (for backends in the cluster) and the headless metrics Service
    (for ServiceMonitors) do."""
    docs = docs_of(name)
    exposed = _admin_exposure(docs)
    admin_port = int(container_env(docs, _edge(docs)[1])["SB_EDGE_ADMIN_PORT"])
    assert exposed.pop("Service/sb-switchboard-edge-admin") == [admin_port]
    if find_all(docs, "ServiceMonitor"):
        assert exposed.pop("Service/sb-switchboard-edge-metrics") == [admin_port]
    assert exposed == {}
    admin = find(docs, "Service", "-edge-admin")
    assert admin["spec"]["type"] == "ClusterIP"
    assert [p["name"] for p in admin["spec"]["ports"]] == ["admin"]


def test_the_exposure_check_sees_a_route_to_the_admin_port() -> None:
    """_admin_exposure can fail: an Ingress and a route to the admin Service count."""
    docs = docs_of("ingress")
    find(docs, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] = {
        "name": "sb-switchboard-edge-admin",
        "port": {"name": "admin"},
    }
    assert list(_admin_exposure(docs)) == [
        "Service/sb-switchboard-edge-admin",
        "Ingress/sb-switchboard-edge",
    ]
    docs = docs_of("gateway")
    route = find(docs, "HTTPRoute")
    route["spec"]["rules"][0]["backendRefs"] = [{"name": "sb-switchboard-edge-admin", "port": 9090}]
    assert "HTTPRoute/sb-switchboard-edge" in _admin_exposure(docs)
    client = find(docs, "Service", "sb-switchboard-edge")
    client["spec"]["ports"].append({"name": "x", "port": 9090, "targetPort": "admin"})
    assert _admin_exposure(docs)["Service/sb-switchboard-edge"] == [9090]


def test_ingress_keeps_websockets_open_and_hides_metrics() -> None:
    docs = docs_of("ingress")
    ingress = find(docs, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"  # user wins
    assert [r["host"] for r in ingress["spec"]["rules"]] == ["ws.example.com", "ws2.example.com"]
    service = find(docs, "Service", "-edge")
    for rule in ingress["spec"]["rules"]:
        paths = rule["http"]["paths"]
        assert [(p["path"], p["pathType"]) for p in paths] == [
            ("/v1/ws", "Prefix"),
            ("/v1/tickets", "Prefix"),
        ]
        for path in paths:
            assert path["backend"]["service"] == {
                "name": service["metadata"]["name"],
                "port": {"name": "http"},
            }
    assert ingress["spec"]["tls"][0]["secretName"] == "ws-tls"
    assert find_all(docs_of("default"), "Ingress") == []


def test_helm_test_pod_round_trips_through_the_service() -> None:
    docs = docs_of("default")
    (pod,) = find_all(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    probe = container(pod["spec"], "probe")
    service = find(docs, "Service", "-edge")
    url = f"ws://{service['metadata']['name']}.{NAMESPACE}.svc:80/v1/ws"
    assert probe["args"][:3] == ["probe", "--url", url]
    _, edge = _edge(docs)
    edge_secret = next(e for e in edge["env"] if e["name"] == "SB_EDGE_JWT_SECRET")
    env = {e["name"]: e for e in probe["env"]}
    assert env["SB_EDGE_JWT_SECRET"] == edge_secret
    # and a backend's publish through NATS, as the backend role
    assert env["SB_NATS_URL"]["value"] == f"nats://sb-switchboard-nats.{NAMESPACE}.svc:4222"
    assert env["SB_NATS_USER"]["value"] == "sb-backend"
    assert env["SB_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "backend-password"
    assert env["SB_SUBJECT_PREFIX"]["value"] == "sb"
    (keyed,) = find_all(docs_of("public-key"), "Pod")
    token = next(e for e in container(keyed["spec"], "probe")["env"] if e["name"] == "SB_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "probe-token", "key": "token"}


def test_notes_tell_how_to_connect() -> None:
    notes = rendered_set("default")["switchboard/templates/NOTES.txt"]
    assert "port-forward svc/sb-switchboard-edge 8080:80" in notes
    assert 'wscat -c ws://localhost:8080/v1/ws -s switchboard.v1 -s "bearer.$TOKEN"' in notes
    assert "switchboard token --sub alice" in notes
    assert "helm test sb" in notes
    ingress = rendered_set("ingress")["switchboard/templates/NOTES.txt"]
    assert "wscat -c wss://ws.example.com/v1/ws" in ingress
    assert "Service sb-switchboard-edge-admin, port 9090, inside the cluster only" in notes
    assert "The server API answers 503 until edge.serverApi.existingSecret" in notes
    keyed = rendered_set("server-api")["switchboard/templates/NOTES.txt"]
    assert "Server API keys: Secret switchboard-api-keys, key keys.txt." in keyed
