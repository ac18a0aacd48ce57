"""The chart and the operator on a real Kubernetes control plane, end to end.

Real: etcd, kube-apiserver (RBAC, admission, CRD validation with CEL) and
kube-controller-manager (Deployment, ReplicaSet, garbage collector ...) built from
Kubernetes' Go modules (tests/controlplane); the chart installed and upgraded by
the Helm engine (helm-python-sdk); `switchboard operator` as a kopf process with
the chart's ServiceAccount token; one `switchboard edge` process per edge pod; a
nats-server with JetStream; WebSocket clients.

Stand-ins (tests/e2e/kubelet.py says exactly how they differ): a kubelet for the
edge pods and the pre-delete hook's pod only (the operator runs as a process of
this test with its ServiceAccount's token instead, so its chart pods stay Pending,
which the API server allows) and a TCP proxy in place of the Service.

The tests share one installation and run in file order, as a user would: install,
prove RBAC, apply a Channel, scale up, scale down, roll out, clean up, uninstall.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import helm_python as helm
import nats
import pytest
from nats.js.errors import KeyNotFoundError, NotFoundError

from switchboard.cli.launch import wait_for_port
from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client
from switchboard.client.resilient import ResilientClient
from switchboard.contract.permissions import ROLES
from switchboard.contract.tokens import mint_token
from switchboard_operator.kube import label_selector
from switchboard_operator.rbac import REQUIRED
from switchboard_operator.settings import PEERING_PRIORITY_MAX
from tests.controlplane.cluster import ControlPlane
from tests.e2e.kubeconfig import api_client
from tests.e2e.kubelet import ServiceProxy, StandInKubelet, peak_rate
from tests.operator.harness import (
    ApiClient,
    OperatorProcess,
    channel_path,
    deployment_path,
    edgepool_path,
    eventually,
    kv_get,
    pod_path,
    ready,
    run_operator,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "switchboard"
NS = "sb-e2e"
RELEASE = "sb"
EDGE = "sb-switchboard-edge"
OPERATOR_SA = "sb-switchboard-operator"
RELEASE_LABELS = {"app.kubernetes.io/name": "switchboard", "app.kubernetes.io/instance": RELEASE}
EDGE_LABELS = RELEASE_LABELS | {"app.kubernetes.io/component": "edge"}
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
METRIC = "switchboard_operator"
COST = "controller.kubernetes.io/pod-deletion-cost"
BUDGET = 10  # edgePool.drain.reconnectsPerSecond, fleet-wide
TARGET = 10  # edgePool.targetConnectionsPerPod
JITTER_MS = 300  # edge reconnect_jitter_ms: clients wait 0..this before reconnecting
END = "end"
CUT_OFF_S = 8  # operator cut_off_after_s: a pod silent this long while others report goes

pytestmark = pytest.mark.timeout(300)


NATS_SECRET = "nats-e2e-credentials"


def chart_values(nats_url: str, rollout: str = "1") -> dict[str, Any]:
    """What a user would pass to `helm install`, with timings shortened for a test.

    The external NATS runs with the role users (switchboard.contract.permissions), their
    passwords in a Secret the user made: edges and operator log in as themselves."""
    return {
        "nats": {"enabled": False, "url": nats_url, "auth": {"existingSecret": NATS_SECRET}},
        "channels": {"examples": False},
        "edge": {
            "config": {"stats_interval_s": 0.5, "reconnect_jitter_ms": JITTER_MS},
            "podAnnotations": {"e2e/rollout": rollout},
        },
        "edgePool": {
            "minReplicas": 2,
            "maxReplicas": 3,
            "targetConnectionsPerPod": TARGET,
            "scaleDownStabilizationSeconds": 8,
            "drain": {"reconnectsPerSecond": BUDGET, "timeoutSeconds": 30},
        },
        "operator": {
            "config": {
                "scale_interval_s": 0.5,
                "status_interval_s": 1,
                "deletion_cost_min_change": 1,
                "deletion_cost_min_interval_s": 1,
                "cut_off_after_s": CUT_OFF_S,
            }
        },
    }


@dataclass
class Stack:
    plane: ControlPlane
    admin: ApiClient
    operator_api: ApiClient
    operator: OperatorProcess
    kubelet: StandInKubelet
    proxy: ServiceProxy
    nats: NatsServer
    jwt_secret: str
    helm: helm.Config

    def token(self, user: str) -> str:
        return mint_token(self.jwt_secret, user)

    async def edge_pods(self) -> list[dict[str, Any]]:
        selector = label_selector(EDGE_LABELS)
        listing = await self.admin.get(f"{pod_path(NS)}?labelSelector={selector}")
        return list(listing["items"])

    async def running(self, count: int) -> list[str] | None:
        """The edge pods, oldest first, once exactly `count` exist, none terminating,
        each with its edge process up and ready (else None)."""
        self.kubelet.check()
        pods = sorted(await self.edge_pods(), key=lambda p: p["metadata"]["creationTimestamp"])
        names = [p["metadata"]["name"] for p in pods]
        settled = not any(p["metadata"].get("deletionTimestamp") for p in pods)
        serving = len(self.kubelet.ready_ports()) == count and set(names) == set(self.kubelet.edges)
        return names if settled and serving and len(names) == count else None


def _secret_value(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


async def _nats_secret(admin: ApiClient, nats_server: NatsServer) -> None:
    """The namespace, and the NATS passwords as a user stores them for the chart."""
    await admin.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    passwords = {f"{role}-password": nats_server.credentials(role)[1] for role in ROLES}
    secret = {"metadata": {"name": NATS_SECRET}, "stringData": passwords, "type": "Opaque"}
    await admin.create(f"/api/v1/namespaces/{NS}/secrets", secret)


@pytest.fixture(scope="module")
async def stack(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    logs = tmp_path_factory.mktemp("e2e")
    with NatsServer(auth=True) as nats_server:
        config = helm.Config(kubeconfig_path=control_plane.admin_kubeconfig(), namespace=NS)
        async with api_client(control_plane.admin_kubeconfig()) as admin:
            await _nats_secret(admin, nats_server)
        await asyncio.to_thread(
            config.install,
            CHART,
            RELEASE,
            chart_values(nats_server.address),
            namespace=NS,
            create_namespace=True,
            timeout=120,
        )
        operator_kubeconfig = control_plane.kubeconfig_for_service_account(NS, OPERATOR_SA)
        async with api_client(control_plane.admin_kubeconfig()) as admin:
            operator_config = await admin.get(f"/api/v1/namespaces/{NS}/configmaps/{OPERATOR_SA}")
            secret = await admin.get(f"/api/v1/namespaces/{NS}/secrets/sb-switchboard-auth")
            async with (
                api_client(operator_kubeconfig) as operator_api,
                StandInKubelet(
                    admin,
                    NS,
                    RELEASE_LABELS,
                    logs,
                    partial(control_plane.kubeconfig_for_service_account, NS),
                    nats_links=True,
                ) as kubelet,
                ServiceProxy(kubelet) as proxy,
                run_operator(
                    operator_kubeconfig,
                    nats_server.url_for("operator"),
                    NS,
                    logs,
                    config=operator_config["data"],
                ) as operator,
            ):
                yield Stack(
                    control_plane,
                    admin,
                    operator_api,
                    operator,
                    kubelet,
                    proxy,
                    nats_server,
                    _secret_value(secret, "jwt-secret"),
                    config,
                )
        config.close()


async def test_chart_installs_and_the_api_server_enforces_the_crds(stack: Stack) -> None:
    for crd in ("channels.switchboard.dev", "edgepools.switchboard.dev", "kopfpeerings.kopf.dev"):
        obj = await stack.admin.get(f"{CRDS}/{crd}")
        conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        assert conditions["Established"] == "True", crd

    # The API server itself refuses what the schema forbids (OpenAPI and CEL rules).
    bad_channel = {
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "Channel",
        "metadata": {"name": "bad", "namespace": NS},
        "spec": {"history": {"size": 0}},
    }
    status, body = await stack.admin.call("POST", channel_path(NS), bad_channel)
    assert status == 422, body
    assert "spec.history.size" in body["message"]
    bad_pool = {
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "EdgePool",
        "metadata": {"name": "bad", "namespace": NS},
        "spec": {"deployment": EDGE, "minReplicas": 5, "maxReplicas": 2},
    }
    status, body = await stack.admin.call("POST", edgepool_path(NS), bad_pool)
    assert status == 422, body
    assert "minReplicas" in body["message"]

    # Defaults come from the CRD schema: the chart's EdgePool has them filled in.
    pool = await stack.admin.get(edgepool_path(NS, EDGE))
    assert pool["spec"]["targetConnectionsPerPod"] == TARGET
    assert pool["spec"]["drain"]["reconnectsPerSecond"] == BUDGET


async def test_operator_runs_as_the_charts_service_account(stack: Stack) -> None:
    """Every permission the operator's code uses is granted; others are refused."""
    for permission in REQUIRED:
        for verb in permission.verbs:
            resource, _, subresource = permission.resource.partition("/")
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {
                    "resourceAttributes": {
                        "namespace": NS,
                        "group": permission.api_group,
                        "resource": resource,
                        "subresource": subresource,
                        "verb": verb,
                    }
                },
            }
            answer = await stack.operator_api.create(
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review
            )
            assert answer["status"]["allowed"], (permission, verb)
    for method, path in (
        ("GET", f"/api/v1/namespaces/{NS}/secrets"),
        ("GET", "/api/v1/nodes"),
        ("DELETE", deployment_path(NS, EDGE)),
        ("GET", "/api/v1/namespaces/kube-system/pods"),
    ):
        status, _ = await stack.operator_api.call(method, path)
        assert status == 403, (method, path)

    # Running as that account, the operator scales the fresh install (the chart leaves
    # `replicas` to it) to minReplicas, and the controllers make the pods.
    assert await eventually(lambda: stack.running(2), timeout=60)
    pool = await eventually(lambda: _pool_ready(stack), timeout=30)
    assert pool["status"]["replicas"] == 2


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, ""


async def test_edges_serve_health_and_metrics_on_the_admin_port_only(stack: Stack) -> None:
    """The pods became Ready through the chart's probe on the admin port (the stand-in
    kubelet asks the port the probe names); the client port has none of it."""
    names = await eventually(lambda: stack.running(2), timeout=60)
    for pod in names:
        admin = f"http://127.0.0.1:{stack.kubelet.admin_port_of(pod)}"
        client = f"http://127.0.0.1:{stack.kubelet.port_of(pod)}"
        assert await asyncio.to_thread(_get, f"{admin}/readyz") == (200, "ready\n")
        status, metrics = await asyncio.to_thread(_get, f"{admin}/metrics")
        assert status == 200 and "sb_edge_connections" in metrics
        for path in ("/readyz", "/healthz", "/metrics"):
            assert (await asyncio.to_thread(_get, f"{client}{path}"))[0] == 404, path


async def _pool_ready(stack: Stack) -> Any:
    pool = await stack.admin.get(edgepool_path(NS, EDGE))
    return pool if (ready(pool) or {}).get("status") == "True" else None


async def test_channel_is_reconciled_through_the_api_server(stack: Stack) -> None:
    await _apply_channel(stack, "flow", {"history": {"size": 5000, "ttl": "10m"}})
    nc = await nats.connect(stack.nats.url_for("operator"))  # the test reads what it wrote
    try:
        entry = await eventually(lambda: kv_get(nc.jetstream(), "flow"))
        assert json.loads(entry)["history"]["size"] == 5000
        info = await nc.jetstream().stream_info("SB_CH_flow")
        assert info.config.max_msgs_per_subject == 5000
    finally:
        await nc.close()
    # Ready from the create handler, then the status timer adds the stream's epoch.
    channel = await eventually(lambda: _channel_reported(stack, "flow"), timeout=30)
    assert "switchboard.dev/cleanup" in channel["metadata"]["finalizers"]
    assert channel["status"]["lastOffset"] == 0


async def _apply_channel(stack: Stack, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "Channel",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }
    await stack.admin.create(channel_path(NS), body)


async def _channel_ready(stack: Stack, name: str) -> Any:
    channel = await stack.admin.get(channel_path(NS, name))
    return channel if (ready(channel) or {}).get("status") == "True" else None


async def _channel_reported(stack: Stack, name: str) -> Any:
    channel = await _channel_ready(stack, name)
    return channel if channel and channel["status"].get("epoch") else None


async def test_scale_up_on_connections_then_down_removing_the_emptiest_pod(
    stack: Stack,
) -> None:
    first, second = await eventually(lambda: stack.running(2), timeout=60)
    held: dict[str, list[Client]] = {first: [], second: []}
    # 25 connections over 2 pods with a target of 10 per pod: 3 pods wanted.
    held[first] += await _open(stack, first, 1)
    held[second] += await _open(stack, second, 24)
    names = await eventually(lambda: stack.running(3), timeout=60)
    third = next(n for n in names if n not in held)
    assert await _replicas(stack) == 3

    # Now 1 / 10 / 5: 16 connections want 2 pods. The oldest pod is the emptiest, so
    # the ReplicaSet's own tie-breakers (newest first) would pick `third`: only the
    # pod-deletion-cost the operator keeps makes it pick `first`.
    held[third] = await _open(stack, third, 5)
    for client in held[second][10:]:
        await client.close()
    costs = {first: "1", second: "10", third: "5"}
    await eventually(lambda: _costs_are(stack, costs), timeout=20)
    survivors = await eventually(lambda: stack.running(2), timeout=60)
    assert sorted(survivors) == sorted([second, third])
    assert stack.kubelet.exit_codes[first] == 0  # it drained and exited cleanly
    assert [c.close_code for c in held[first]] == [1001]
    assert await _replicas(stack) == 2
    for client in held[second][:10] + held[third]:
        await client.close()


async def _open(stack: Stack, pod: str, count: int) -> list[Client]:
    url = f"ws://127.0.0.1:{stack.kubelet.port_of(pod)}/v1/ws"
    return [await Client.connect(url, token=stack.token(f"{pod}-{i}")) for i in range(count)]


async def _replicas(stack: Stack) -> int:
    deployment = await stack.admin.get(deployment_path(NS, EDGE))
    return int(deployment["spec"]["replicas"])


async def _costs_are(stack: Stack, want: dict[str, str]) -> bool:
    pods = {p["metadata"]["name"]: p for p in await stack.edge_pods()}
    return all(
        (pods[name]["metadata"].get("annotations") or {}).get(COST) == cost
        for name, cost in want.items()
        if name in pods
    ) and set(want) <= set(pods)


async def test_rollout_drains_within_the_budget_and_loses_nothing(stack: Stack) -> None:
    """`helm upgrade` changes the pod template; 30 clients on a history channel
    receive every message a backend publishes at 40/s throughout, exactly once,
    in order, while the old pods drain with 1001 within the fleet-wide budget."""
    await eventually(lambda: stack.running(2), timeout=60)
    clients = [ResilientClient([stack.proxy.ws_url], _token_source(stack, i)) for i in range(30)]
    for client in clients:
        await client.start()
        await client.subscribe("flow:room")
    # 30 connections, 10 per pod: the operator scales to 3 before the rollout starts.
    old = await eventually(lambda: stack.running(3), timeout=60)
    moves: list[float] = []  # when an edge told a client to move (then closed it, 1001)
    collectors = [asyncio.create_task(_collect(c, moves)) for c in clients]
    publisher = await nats.connect(stack.nats.url)
    published = 0
    rolled = asyncio.Event()

    async def publish() -> None:
        nonlocal published
        tail = 25  # keep publishing a little after the rollout ends
        while tail:
            await publisher.publish("sb.ch.flow.room", json.dumps(published).encode())
            published += 1
            tail -= rolled.is_set()
            await asyncio.sleep(1 / 40)
        await publisher.publish("sb.ch.flow.room", json.dumps(END).encode())

    publishing = asyncio.create_task(publish())
    await asyncio.sleep(1)
    started = time.monotonic()
    await asyncio.to_thread(
        stack.helm.upgrade,
        CHART,
        RELEASE,
        chart_values(stack.nats.address, rollout="2"),
        timeout=120,
    )
    try:
        new = await eventually(lambda: _rolled_over(stack, old), timeout=120)
    except TimeoutError:
        raise AssertionError(await _describe(stack)) from None
    rolled.set()
    duration = time.monotonic() - started
    await publishing
    await publisher.close()
    received = await asyncio.wait_for(asyncio.gather(*collectors), 60)

    for got in received:
        assert got == list(range(published))  # all, exactly once, in order
    assert all(stack.kubelet.exit_codes[pod] == 0 for pod in old)
    assert all(c.connections > 1 for c in clients)  # every client was on an old pod
    assert all(c.resumed >= 1 for c in clients)
    # Moves are timed where a client reads its `reconnect` frame: 30 clients share this
    # test's event loop, so a busy moment reads two seconds' frames a little late and
    # bunched. Over a 2 s window that bunching is a small part of the count; the pace
    # promised per second holds over every window, so it is checked over 2 s.
    drain_peak = peak_rate(moves, window_s=2.0)
    reconnect_peak = peak_rate([t for t in stack.proxy.accepted if t >= started])
    print(
        f"\nrollout {len(old)} pods in {duration:.1f}s, {published} messages to "
        f"{len(clients)} clients, {len(moves)} moves; peak 1001 closes {drain_peak:.0f}/s, "
        f"peak reconnects {reconnect_peak:.0f}/s (budget {BUDGET}/s)"
    )
    # The operator divides the budget among the pods draining at once, lowering the
    # running ones before a new one starts, which waits one interval before its first
    # move. One close of slack: each edge paces by its own timer.
    assert drain_peak <= BUDGET + 1, drain_peak
    # Each client waits a random 0..jitter before it comes back, so a 1 s window of
    # reconnects holds the moves of at most 1 s + jitter.
    assert reconnect_peak <= BUDGET * (1 + JITTER_MS / 1000) + 1, reconnect_peak
    assert new
    for client in clients:
        await client.close()


def _token_source(stack: Stack, index: int) -> Any:
    async def token() -> str:
        return stack.token(f"listener-{index}")

    return token


async def _rolled_over(stack: Stack, old: list[str]) -> list[str] | None:
    names = await stack.running(len(old))
    if names is None or set(names) & set(old):
        return None
    deployment = await stack.admin.get(deployment_path(NS, EDGE))
    status = deployment.get("status") or {}
    done = status.get("updatedReplicas") == status.get("replicas") == len(old)
    return names if done else None


async def _collect(client: ResilientClient, moves: list[float]) -> list[int]:
    """Event data until the backend's END marker; the time of each `reconnect`."""
    got: list[int] = []
    async for msg in client.events():
        if msg["type"] == "reconnect":
            moves.append(time.monotonic())
        elif msg["type"] == "event":
            if msg["payload"]["data"] == END:
                break
            got.append(msg["payload"]["data"])
    return got


async def test_an_edge_cut_off_from_nats_is_replaced_and_its_clients_move(stack: Stack) -> None:
    """One edge pod loses its path to NATS, alone, and it stays lost (a partition of
    that pod). Its clients' sockets stay open but nothing reaches them, and the edge
    cannot tell this from an outage of all of NATS; its stats stop. The operator sees
    the other pod report, deletes the silent one; its edge drains (`reconnect` + 1001)
    though it cannot ask for a pace, its clients move to the other pod and receive
    again, and the Deployment replaces the pod."""
    names = await eventually(lambda: stack.running(2), timeout=90)
    clients = [
        ResilientClient([stack.proxy.ws_url], _token_source(stack, 100 + i)) for i in range(6)
    ]
    for client in clients:
        await client.start()
        await client.subscribe("flow:room")
    on = {c: (c.client.welcome if c.client else {}).get("node") for c in clients}
    victim = names[0]
    stranded = [c for c, pod in on.items() if pod == victim]
    assert stranded and set(on.values()) == set(names), on
    replaced_before = stack.operator.metrics()[f"{METRIC}_cut_off_replacements_total"]

    stack.kubelet.links[victim].cut()
    cut_at = time.monotonic()
    deleted = await eventually(lambda: _deleting(stack, victim), timeout=CUT_OFF_S + 30)
    waited = time.monotonic() - cut_at
    # Not before the pod had been silent for the operator's cut_off_after_s.
    assert waited >= CUT_OFF_S - 1, waited
    assert deleted
    assert stack.operator.metrics()[f"{METRIC}_cut_off_replacements_total"] == (replaced_before + 1)
    # Its edge drains and exits cleanly, and every client is served again.
    await eventually(lambda: _exited(stack, victim), timeout=60)
    assert stack.kubelet.exit_codes[victim] == 0
    publisher = await nats.connect(stack.nats.url)
    try:

        async def everyone_receives() -> bool:
            await publisher.publish("sb.ch.flow.room", json.dumps("after the cut").encode())
            return all(c.connections >= 2 for c in stranded)

        await eventually(everyone_receives, timeout=60)
        await publisher.publish("sb.ch.flow.room", json.dumps(END).encode())
        got = await asyncio.wait_for(
            asyncio.gather(*(_collect_any(c) for c in clients)), timeout=60
        )
    finally:
        await publisher.close()
    assert all("after the cut" in data for data in got), got
    assert all((c.client.welcome if c.client else {}).get("node") != victim for c in clients)
    events = await stack.admin.get(f"/api/v1/namespaces/{NS}/events")
    reasons = [e for e in events["items"] if e.get("reason") == "ReplacedSilentPod"]
    assert reasons and victim in reasons[-1]["message"], reasons
    # The Deployment replaced it; the other pod was never touched.
    now = await eventually(lambda: stack.running(2), timeout=90)
    assert victim not in now and names[1] in now
    for client in clients:
        await client.close()


async def test_a_pod_cut_off_before_the_operator_restarted_is_replaced_too(
    stack: Stack,
) -> None:
    """The operator is down while an edge pod loses NATS, and comes back after that
    pod's stats have expired from `sb_edges`: it never hears from the pod. It judges
    the pod silent since it began to watch (the pod ran before that), sees the
    other pod report, and replaces the silent one after `cut_off_after_s`."""
    names = await eventually(lambda: stack.running(2), timeout=90)
    victim = names[0]
    operator = stack.operator.process
    await asyncio.to_thread(operator.stop, 20)
    stack.kubelet.links[victim].cut()
    watcher = await nats.connect(stack.nats.url_for("operator"))
    try:
        edges = await watcher.jetstream().key_value("sb_edges")

        async def expired() -> bool:
            try:
                await edges.get(victim)
            except KeyNotFoundError:
                return True
            return False

        await eventually(expired, timeout=40)
        assert await edges.get(names[1])  # the other pod reports all along
    finally:
        await watcher.close()
    operator.spawn()
    await asyncio.to_thread(wait_for_port, stack.operator.metrics_port, 30)
    started = time.monotonic()
    await eventually(lambda: _deleting(stack, victim), timeout=CUT_OFF_S + 30)
    assert time.monotonic() - started >= CUT_OFF_S - 1
    assert stack.operator.metrics()[f"{METRIC}_cut_off_replacements_total"] == 1
    await eventually(lambda: _exited(stack, victim), timeout=60)
    now = await eventually(lambda: stack.running(2), timeout=90)
    assert victim not in now and names[1] in now


async def _deleting(stack: Stack, pod: str) -> bool:
    current = await stack.admin.get(pod_path(NS, pod))
    return current is None or bool(current["metadata"].get("deletionTimestamp"))


async def _exited(stack: Stack, pod: str) -> bool:
    return pod in stack.kubelet.exit_codes


async def _collect_any(client: ResilientClient) -> list[Any]:
    """Event data until the END marker."""
    got: list[Any] = []
    async for msg in client.events():
        if msg["type"] == "event":
            if msg["payload"]["data"] == END:
                break
            got.append(msg["payload"]["data"])
    return got


async def test_deleting_the_channel_runs_the_finalizer_and_the_operator_was_never_refused(
    stack: Stack,
) -> None:
    await stack.admin.delete(channel_path(NS, "flow"))
    await eventually(lambda: _gone(stack, channel_path(NS, "flow")), timeout=30)
    nc = await nats.connect(stack.nats.url_for("operator"))
    try:
        assert await kv_get(nc.jetstream(), "flow") is None
        with pytest.raises(NotFoundError):
            await nc.jetstream().stream_info("SB_CH_flow")
    finally:
        await nc.close()
    log = stack.operator.log()
    assert "Forbidden" not in log and " 403" not in log, log[-3000:]
    events = await stack.admin.get(f"/api/v1/namespaces/{NS}/events")
    reasons = {e.get("reason") for e in events["items"]}
    assert {"Scaled", "Applied"} <= reasons


async def _gone(stack: Stack, path: str) -> bool:
    return await stack.admin.get(path) is None


async def _describe(stack: Stack) -> str:
    """What the rollout looked like when it timed out, for the failure message."""
    deployment = await stack.admin.get(deployment_path(NS, EDGE))
    pods = [
        (
            p["metadata"]["name"],
            p["metadata"].get("deletionTimestamp"),
            (p["metadata"].get("annotations") or {}).get(COST),
            p["status"].get("phase"),
        )
        for p in await stack.edge_pods()
    ]
    return (
        f"deployment spec.replicas={deployment['spec'].get('replicas')} "
        f"status={deployment.get('status')}\npods={pods}\n"
        f"kubelet edges={sorted(stack.kubelet.edges)} exited={stack.kubelet.exit_codes}"
    )


async def test_a_second_replica_takes_over_and_hands_back(stack: Stack, tmp_path: Path) -> None:
    """kopf peering with the chart's peering object: a replica with a higher priority
    makes the running one pause and does the work; when it stops, the first resumes.
    (Two replicas of equal priority would both pause: each draws its own.)"""
    paused_before = stack.operator.log().count("Pausing operations in favour of")
    config = (await stack.admin.get(f"/api/v1/namespaces/{NS}/configmaps/{OPERATOR_SA}"))["data"]
    kubeconfig = stack.plane.kubeconfig_for_service_account(NS, OPERATOR_SA)
    async with run_operator(
        kubeconfig,
        stack.nats.url_for("operator"),
        NS,
        tmp_path,
        config=config,
        peering_priority=str(PEERING_PRIORITY_MAX),
    ) as second:
        await eventually(
            lambda: _logged(stack.operator, "Pausing operations in favour of", paused_before),
            timeout=30,
        )
        applied_before = stack.operator.metrics()[f"{METRIC}_channel_applies_total"]
        await _apply_channel(stack, "relay", {"presence": True})
        await eventually(lambda: _channel_ready(stack, "relay"), timeout=30)
        assert second.metrics()[f"{METRIC}_channel_applies_total"] == 1
        assert stack.operator.metrics()[f"{METRIC}_channel_applies_total"] == applied_before
    await eventually(
        lambda: _logged(stack.operator, "Resuming operations after the pause", 0), timeout=30
    )
    deletes_before = stack.operator.metrics()[f"{METRIC}_channel_deletes_total"]
    await stack.admin.delete(channel_path(NS, "relay"))
    await eventually(lambda: _gone(stack, channel_path(NS, "relay")), timeout=30)
    assert stack.operator.metrics()[f"{METRIC}_channel_deletes_total"] == deletes_before + 1


async def _logged(operator: OperatorProcess, text: str, more_than: int) -> bool:
    return operator.log().count(text) > more_than


async def test_helm_uninstall_removes_the_release_and_leaves_nothing_terminating(
    stack: Stack,
) -> None:
    """Last. kopf's finalizer is on the EdgePool, and Helm deletes custom resources
    after the operator's RBAC: without the chart's pre-delete hook the EdgePool would
    stay Terminating for good. The hook Job (run by the stand-in kubelet as the
    operator's ServiceAccount) deletes it while the operator still runs; then the
    rest goes, and the edge pods are garbage-collected, their edges drained."""
    await _apply_channel(stack, "goodbye", {"presence": True})  # a user's, not the release's
    await eventually(lambda: _channel_ready(stack, "goodbye"), timeout=30)
    await asyncio.to_thread(stack.helm.uninstall, RELEASE, timeout=120)
    hooks = {pod: code for pod, code in stack.kubelet.exit_codes.items() if "-cleanup-" in pod}
    assert list(hooks.values()) == [0], stack.kubelet.exit_codes
    for path in (
        edgepool_path(NS, EDGE),
        deployment_path(NS, EDGE),
        f"/api/v1/namespaces/{NS}/serviceaccounts/{OPERATOR_SA}",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/{OPERATOR_SA}",
        f"/api/v1/namespaces/{NS}/configmaps/{EDGE}",
        f"/apis/batch/v1/namespaces/{NS}/jobs/{OPERATOR_SA}-cleanup",
    ):
        try:
            await eventually(partial(_gone, stack, path), timeout=30)
        except TimeoutError:
            raise AssertionError(f"{path} stays: {await stack.admin.get(path)}") from None
    assert await eventually(lambda: _no_edge_pods(stack), timeout=60)
    assert stack.kubelet.edges == {}
    assert set(stack.kubelet.exit_codes.values()) == {0}
    # The user's own Channel is not the release's: the hook leaves it alone.
    assert await stack.admin.get(channel_path(NS, "goodbye"))


async def _no_edge_pods(stack: Stack) -> bool:
    return not await stack.edge_pods()
