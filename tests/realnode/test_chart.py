"""The unchanged chart, installed by Helm's engine on the real node, as a user would.

Real: the node of tests/realnode/node.py (kubelet, containerd, kube-proxy, CoreDNS, local
PersistentVolumes), the chart installed by helm-python-sdk (Helm's Go engine) with only the
image references overridden (no registry here: the images are built locally), the
operator (two replicas, kopf peering), the edges (their probes and preStop), NATS x3 as a
StatefulSet with JetStream, ``helm test``, and WebSocket clients from the host through the
edge Service's ClusterIP (kube-proxy).

Not real: nothing enforces the chart's NetworkPolicies (the bridge CNI has no policy
engine), and the host stands in for "outside the cluster".

The tests share one release and run in file order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import nats
import nats.js.errors
import pytest

from switchboard.client import Client
from switchboard.client.resilient import ResilientClient
from switchboard.contract.tokens import mint_token
from tests.e2e.kubelet import peak_rate
from tests.realnode.images import Images
from tests.realnode.node import Node

pytestmark = pytest.mark.timeout(600)

CHART = Path(__file__).resolve().parents[2] / "charts" / "switchboard"
NS = "switchboard"
RELEASE = "sb"
EDGE_SERVICE = "sb-switchboard-edge"
AUTH_SECRET = "sb-switchboard-auth"
INSTANCE = "app.kubernetes.io/instance=sb"


def image_values(images: Images) -> dict[str, Any]:
    """The only values given to the chart: where the locally built images are."""
    repository, tag = images.switchboard.rsplit(":", 1)
    nats_repository, nats_tag = images.nats.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag},
        "nats": {"image": {"repository": nats_repository, "tag": nats_tag}},
    }


@dataclass
class Release:
    node: Node
    helm: helm.Config
    installed_at: float
    values: dict[str, Any]

    def pods(self, selector: str = INSTANCE) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{NS}/pods?labelSelector={selector}"
        items: list[dict[str, Any]] = self.node.api.request("GET", path)["items"]
        return items

    def component(self, name: str) -> list[dict[str, Any]]:
        return self.pods(f"{INSTANCE},app.kubernetes.io/component={name}")

    def secret(self, name: str, key: str) -> str:
        secret = self.node.api.request("GET", f"/api/v1/namespaces/{NS}/secrets/{name}")
        return base64.b64decode(secret["data"][key]).decode()

    def token(self, user: str) -> str:
        return mint_token(self.secret(AUTH_SECRET, "jwt-secret"), user)

    def edge_url(self) -> str:
        service = self.node.api.request("GET", f"/api/v1/namespaces/{NS}/services/{EDGE_SERVICE}")
        port = service["spec"]["ports"][0]["port"]
        return f"ws://{service['spec']['clusterIP']}:{port}/v1/ws"


def is_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def describe(release: Release) -> str:
    """Every pod's phase and container states, for failure messages."""
    lines = []
    for pod in release.pods(""):
        status = pod.get("status", {})
        states = {c["name"]: c.get("state") for c in status.get("containerStatuses", [])}
        lines.append(f"{pod['metadata']['name']}: {status.get('phase')} {json.dumps(states)}")
    return "\n".join(lines)


def wait_until(release: Release, check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        release.node.check_alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s}s\n{describe(release)}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def release(node: Node, images: Images) -> Iterator[Release]:
    config = helm.Config(kubeconfig_path=node.kubeconfig(), namespace=NS)
    values = image_values(images)
    started = time.monotonic()
    try:
        config.install(CHART, RELEASE, values, namespace=NS, create_namespace=True, timeout=300)
        yield Release(node, config, started, values)
    finally:
        config.close()


def test_every_pod_becomes_ready(release: Release) -> None:
    """Edges (probes on the admin port), two operators, three NATS servers with their
    claims bound to the node's local volumes."""

    def all_ready() -> bool:
        counts = {c: len(release.component(c)) for c in ("edge", "operator", "nats")}
        pods = release.pods()
        return counts == {"edge": 2, "operator": 2, "nats": 3} and all(map(is_ready, pods))

    wait_until(release, all_ready, 300, "Ready pods of the release")
    took = time.monotonic() - release.installed_at
    print(f"helm install -> every pod Ready: {took:.1f}s")


def test_nats_forms_a_jetstream_cluster(release: Release) -> None:
    """The three servers route to each other by their headless-Service DNS names and
    elect a JetStream meta leader."""
    ips = [p["status"]["podIP"] for p in release.component("nats")]

    def meta() -> dict[str, Any] | None:
        with urllib.request.urlopen(f"http://{ips[0]}:8222/jsz", timeout=3) as resp:
            info: dict[str, Any] = json.load(resp)
        cluster = info.get("meta_cluster", {})
        return info if cluster.get("leader") and cluster.get("cluster_size") == 3 else None

    info = wait_until(release, meta, 60, "JetStream meta leader of 3")
    assert info["meta_cluster"]["cluster_size"] == 3


def test_helm_test_passes(release: Release) -> None:
    """The chart's test pod: a round trip through the Service, and from a backend on NATS."""
    # A failing test pod raises HelmReleaseError; the logs show what it did.
    result = release.helm.test(RELEASE, timeout=180, logs=True)
    assert "ok: round trip" in result["logs"], result["logs"]
    assert "from a backend on NATS" in result["logs"], result["logs"]


async def test_client_through_the_service_from_outside(release: Release) -> None:
    token = release.token("alice")
    client = await Client.connect(release.edge_url(), token=token)
    try:
        await client.subscribe("chat:realnode")
        await client.publish("chat:realnode", {"via": "kube-proxy"})
        async with asyncio.timeout(10):
            async for msg in client.events():
                if msg.get("type") == "event":
                    assert msg["payload"]["data"] == {"via": "kube-proxy"}
                    break
    finally:
        await client.close()


# -- 4a: a rolling upgrade under load ---------------------------------------------------

NATS_SERVICE = "sb-switchboard-nats"
NATS_SECRET = "sb-switchboard-nats-credentials"
CHANNELS = "/apis/switchboard.dev/v1alpha1/namespaces/{ns}/channels"
EDGEPOOL = "/apis/switchboard.dev/v1alpha1/namespaces/{ns}/edgepools"
END = "end"
CLIENTS = 30
JITTER_MS = 3000  # the edge's default reconnect_jitter_ms: clients wait 0..this


class TimedClient(ResilientClient):
    """A ResilientClient that notes when each WebSocket session was accepted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted: list[float] = []

    async def _connect(self, token: str, resume: str | None) -> tuple[Client, bool]:
        connected = await super()._connect(token, resume)
        self.accepted.append(time.monotonic())
        return connected


def nats_url(release: Release, role: str) -> str:
    """The bundled NATS through its Service, as ``role`` (credentials from the chart's
    generated Secret)."""
    service = release.node.api.request("GET", f"/api/v1/namespaces/{NS}/services/{NATS_SERVICE}")
    password = release.secret(NATS_SECRET, f"{role}-password")
    return f"nats://sb-{role}:{password}@{service['spec']['clusterIP']}:4222"


async def collect(client: ResilientClient, moves: list[float]) -> list[Any]:
    got: list[Any] = []
    async for msg in client.events():
        if msg["type"] == "reconnect":
            moves.append(time.monotonic())
        elif msg["type"] == "event":
            if msg["payload"]["data"] == END:
                break
            got.append(msg["payload"]["data"])
    return got


def test_history_channel_gets_an_r3_stream(release: Release) -> None:
    """A Channel with history (applied as a user would): the operator makes its stream,
    with three copies on the three NATS servers."""
    release.node.api.request(
        "POST",
        CHANNELS.format(ns=NS),
        {
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "Channel",
            "metadata": {"name": "flow"},
            "spec": {"history": {"size": 5000, "ttl": "10m"}},
        },
    )

    async def replicas() -> int | None:
        nc = await nats.connect(nats_url(release, "operator"))
        try:
            info = await nc.jetstream().stream_info("SB_CH_flow")
            return info.config.num_replicas if info.cluster and info.cluster.leader else None
        except nats.js.errors.NotFoundError:
            return None
        finally:
            await nc.close()

    assert wait_until(release, lambda: asyncio.run(replicas()), 60, "SB_CH_flow stream") == 3


def edge_pods(release: Release) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in release.component("edge")}


async def test_upgrade_rolls_the_edges_under_load(release: Release) -> None:
    """``helm upgrade`` with a changed pod template: 30 clients on a history channel get
    every message a backend publishes at 40/s, exactly once, in order; the old pods
    drain (1001) and are gone within their grace period; new sessions per second stay
    within the EdgePool's reconnect budget (plus the clients' jitter)."""
    pool = release.node.api.request("GET", EDGEPOOL.format(ns=NS))["items"][0]
    budget = pool["spec"]["drain"]["reconnectsPerSecond"]
    old = edge_pods(release)
    assert len(old) == 2 and all(map(is_ready, old.values()))
    url = release.edge_url()
    clients = []
    for i in range(CLIENTS):
        token = release.token(f"listener-{i}")

        async def source(token: str = token) -> str:
            return token

        client = TimedClient([url], source)
        await client.start()
        await client.subscribe("flow:room")
        clients.append(client)
    moves: list[float] = []
    collectors = [asyncio.create_task(collect(c, moves)) for c in clients]
    publisher = await nats.connect(nats_url(release, "backend"))
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
    values = {**release.values, "edge": {"podAnnotations": {"realnode/rollout": "2"}}}
    await asyncio.to_thread(release.helm.upgrade, CHART, RELEASE, values, timeout=300)
    release.values = values

    deleting: dict[str, float] = {}  # old pod -> when it was first seen terminating
    gone: dict[str, float] = {}
    exit_codes: dict[str, int] = {}

    def rolled_over() -> bool:
        now = time.monotonic()
        pods = edge_pods(release)
        for name in old:
            current = pods.get(name)
            if current is None:
                gone.setdefault(name, now)
                continue
            if current["metadata"].get("deletionTimestamp"):
                deleting.setdefault(name, now)
            for status in current.get("status", {}).get("containerStatuses", []):
                terminated = (status.get("state") or {}).get("terminated")
                if terminated:
                    exit_codes[name] = terminated["exitCode"]
        new = [p for n, p in pods.items() if n not in old]
        return len(gone) == len(old) and len(new) == 2 and all(map(is_ready, new))

    while not rolled_over():
        if time.monotonic() - started > 400:
            pytest.fail(f"the rollout did not finish in 400s\n{describe(release)}")
        await asyncio.sleep(0.2)
    rolled.set()
    duration = time.monotonic() - started
    await publishing
    await publisher.close()
    received = await asyncio.wait_for(asyncio.gather(*collectors), 60)
    for client in clients:
        await client.close()

    for got in received:
        assert got == list(range(published))  # all, exactly once, in order
    assert all(c.connections > 1 for c in clients)  # every client moved
    assert not any(exit_codes.values()), exit_codes
    grace = old[next(iter(old))]["spec"]["terminationGracePeriodSeconds"]
    for name in old:
        assert gone[name] - deleting.get(name, started) < grace, (name, gone, deleting)
    accepted = [t for c in clients for t in c.accepted if t >= started]
    peak = peak_rate(accepted)
    print(
        f"\nrollout of {len(old)} edge pods in {duration:.1f}s, {published} messages to "
        f"{CLIENTS} clients, {len(moves)} moves; peak new sessions {peak:.0f}/s "
        f"(budget {budget}/s + {JITTER_MS} ms jitter); old pods gone "
        f"{[round(gone[n] - deleting.get(n, started), 1) for n in old]}s after deletion "
        f"(grace {grace}s)"
    )
    assert peak <= budget * (1 + JITTER_MS / 1000) + 1, peak


# -- 4c: a NATS server deleted under load -----------------------------------------------


def stream_leader(url: str, stream: str) -> tuple[str | None, int]:
    """The stream's leader and how many of its replicas are current."""

    async def ask() -> tuple[str | None, int]:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(stream)
        except nats.js.errors.NotFoundError:
            return None, 0
        finally:
            await nc.close()
        cluster = info.cluster
        if cluster is None:
            return None, 0
        current = 1 + sum(1 for r in cluster.replicas or [] if r.current and not r.offline)
        return cluster.leader, current if cluster.leader else 0

    return asyncio.run(ask())


async def test_nats_pod_deleted_under_load_loses_nothing(release: Release) -> None:
    """The history stream's leader pod is deleted (lame duck, then gone) while a backend
    publishes with JetStream acks: the StatefulSet brings the server back on its claim,
    every acknowledged message reaches every client once, in order, and the clients'
    sessions never end (their edges move to the other servers)."""
    operator_url = nats_url(release, "operator")
    leader, _ = await asyncio.to_thread(stream_leader, operator_url, "SB_CH_flow")
    assert leader is not None
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in release.component("nats")}
    assert leader in before, (leader, before)
    edges = {p["metadata"]["name"] for p in release.component("edge")}
    url = release.edge_url()
    clients = []
    for i in range(20):
        token = release.token(f"nats-loss-{i}")

        async def source(token: str = token) -> str:
            return token

        client = TimedClient([url], source)
        await client.start()
        await client.subscribe("flow:natsloss")
        clients.append(client)
    moves: list[float] = []
    collectors = [asyncio.create_task(collect(c, moves)) for c in clients]
    publisher = await nats.connect(nats_url(release, "backend"), max_reconnect_attempts=-1)
    js = publisher.jetstream()
    acked = 0
    back = asyncio.Event()
    retries = 0

    async def publish(data: Any) -> None:
        nonlocal retries
        payload = json.dumps(data).encode()
        msg_id = f"natsloss-{data}"  # a retried message is stored once (dedupe window)
        while True:
            try:
                await js.publish(
                    "sb.ch.flow.natsloss", payload, timeout=2, headers={"Nats-Msg-Id": msg_id}
                )
                return
            except Exception:  # timeouts and no-responders while a leader is elected
                retries += 1
                await asyncio.sleep(0.1)

    async def publishing() -> None:
        nonlocal acked
        tail = 40
        while tail:
            await publish(acked)
            acked += 1
            tail -= back.is_set()
            await asyncio.sleep(1 / 40)
        await publish(END)

    task = asyncio.create_task(publishing())
    await asyncio.sleep(2)
    started = time.monotonic()
    release.node.api.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{leader}")

    def returned() -> bool:
        pods = {p["metadata"]["name"]: p for p in release.component("nats")}
        pod = pods.get(leader)
        replaced = pod is not None and pod["metadata"]["uid"] != before[leader]
        if not (replaced and len(pods) == 3 and all(map(is_ready, pods.values()))):
            return False
        new_leader, current = stream_leader(operator_url, "SB_CH_flow")
        return new_leader is not None and current == 3

    while not await asyncio.to_thread(returned):
        if time.monotonic() - started > 300:
            pytest.fail(f"{leader} not back with its stream in 300s\n{describe(release)}")
        await asyncio.sleep(1)
    back.set()
    took = time.monotonic() - started
    await task
    await publisher.close()
    received = await asyncio.wait_for(asyncio.gather(*collectors), 60)
    for client in clients:
        await client.close()

    for got in received:
        assert got == list(range(acked))  # every acknowledged message, once, in order
    assert [c.connections for c in clients] == [1] * len(clients)  # no session ended
    assert {p["metadata"]["name"] for p in release.component("edge")} == edges
    restarts = [
        s["restartCount"]
        for p in release.component("edge")
        for s in p["status"].get("containerStatuses", [])
    ]
    assert not any(restarts), restarts
    print(
        f"\nNATS {leader} (stream leader) deleted: back with 3 current replicas after "
        f"{took:.1f}s; {acked} acked messages to {len(clients)} clients, "
        f"{retries} publish retries, 0 sessions ended"
    )


# -- 4d: the active operator deleted ----------------------------------------------------

PEERINGS = "/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings"


def active_operator(release: Release) -> str | None:
    """The operator pod whose kopf peer has the highest priority (the one that acts)."""
    pods: list[str] = [p["metadata"]["name"] for p in release.component("operator") if is_ready(p)]
    peerings = release.node.api.request("GET", PEERINGS.format(ns=NS))["items"]
    peers = peerings[0].get("status", {}) if peerings else {}
    ranked = sorted(peers.items(), key=lambda kv: -int(kv[1].get("priority", 0)))
    for peer_id, _ in ranked:
        for pod in pods:
            if pod in peer_id:
                return pod
    return None


def test_deleting_the_active_operator_hands_over(release: Release) -> None:
    """The other replica takes over (kopf peering) and reconciles a new Channel; the
    Deployment brings a second replica back."""
    active: str = wait_until(release, lambda: active_operator(release), 60, "active operator")
    started = time.monotonic()
    release.node.api.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{active}")

    def other_active() -> str | None:
        now = active_operator(release)
        return now if now and now != active else None

    successor = wait_until(release, other_active, 120, "operator taking over")
    release.node.api.request(
        "POST",
        CHANNELS.format(ns=NS),
        {
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "Channel",
            "metadata": {"name": "handover"},
            "spec": {"history": {"size": 100, "ttl": "10m"}},
        },
    )
    operator_url = nats_url(release, "operator")
    wait_until(
        release,
        lambda: stream_leader(operator_url, "SB_CH_handover")[1] == 3,
        60,
        "SB_CH_handover stream from the new active operator",
    )
    took = time.monotonic() - started

    def two_ready() -> bool:
        pods = release.component("operator")
        return len(pods) == 2 and all(map(is_ready, pods))

    wait_until(release, two_ready, 120, "two Ready operator replicas")
    print(f"\noperator {active} deleted: {successor} active and reconciling in {took:.1f}s")


# -- 4b: scale-down removes the emptiest pod -------------------------------------------

COST = "controller.kubernetes.io/pod-deletion-cost"


def settled_edges(release: Release, count: int) -> list[str] | None:
    """The edge pods, oldest first, once exactly ``count`` exist, all Ready."""
    pods = sorted(release.component("edge"), key=lambda p: p["metadata"]["creationTimestamp"])
    if len(pods) == count and all(map(is_ready, pods)):
        return [p["metadata"]["name"] for p in pods]
    return None


async def open_on(release: Release, pod: str, count: int) -> list[Client]:
    """``count`` clients straight to one edge pod (its IP, from the host)."""
    ip = edge_pods(release)[pod]["status"]["podIP"]
    return [
        await Client.connect(f"ws://{ip}:8080/v1/ws", token=release.token(f"{pod}-{i}"))
        for i in range(count)
    ]


async def test_scale_down_removes_the_emptiest_pod(release: Release) -> None:
    """A user's ``helm upgrade`` to a target of 10 connections per pod (and quicker
    operator and edge timings); 25 connections make the operator scale to 3; then
    1 / 10 / 5 want 2 pods, and the real ReplicaSet controller removes the oldest pod,
    the emptiest, because of the pod-deletion-cost the operator keeps (its own
    tie-breaker would remove the newest)."""
    values = {
        **release.values,
        "edge": {**release.values.get("edge", {}), "config": {"stats_interval_s": 0.5}},
        "edgePool": {"targetConnectionsPerPod": 10, "scaleDownStabilizationSeconds": 8},
        "operator": {
            "config": {
                "scale_interval_s": 0.5,
                "deletion_cost_min_change": 1,
                "deletion_cost_min_interval_s": 1,
            }
        },
    }
    before = set(edge_pods(release))
    release.helm.upgrade(CHART, RELEASE, values, timeout=300)
    release.values = values

    def rolled() -> list[str] | None:
        names = settled_edges(release, 2)
        operators = release.component("operator")
        ok = len(operators) == 2 and all(map(is_ready, operators))
        return names if names and not set(names) & before and ok else None

    first, second = wait_until(release, rolled, 300, "edges and operators rolled")
    held: dict[str, list[Client]] = {first: [], second: []}
    held[first] += await open_on(release, first, 1)
    held[second] += await open_on(release, second, 24)
    names = await asyncio.to_thread(
        wait_until, release, lambda: settled_edges(release, 3), 120, "a third edge"
    )
    third = next(n for n in names if n not in held)
    held[third] = await open_on(release, third, 5)
    for client in held[second][10:]:
        await client.close()
    uneven = time.monotonic()
    want = {first: "1", second: "10", third: "5"}

    def costs() -> bool:
        pods = edge_pods(release)
        return all(
            (pods[n]["metadata"].get("annotations") or {}).get(COST) == c
            for n, c in want.items()
            if n in pods
        )

    await asyncio.to_thread(wait_until, release, costs, 60, f"deletion costs {want}")
    survivors = await asyncio.to_thread(
        wait_until, release, lambda: settled_edges(release, 2), 120, "scale-down to 2"
    )
    took = time.monotonic() - uneven
    assert sorted(survivors) == sorted([second, third])
    assert [await c.wait_closed(timeout=30) for c in held[first]] == [1001]  # it drained
    print(f"\nscale-down 3 -> 2 removed the emptiest (oldest) pod {took:.1f}s after 1/10/5")
    for client in held[second][:10] + held[third]:
        await client.close()


# -- 4e: helm uninstall -----------------------------------------------------------------

RELEASE_KINDS = (
    "/api/v1/namespaces/{ns}/pods",
    "/api/v1/namespaces/{ns}/services",
    "/api/v1/namespaces/{ns}/configmaps",
    "/api/v1/namespaces/{ns}/secrets",
    "/api/v1/namespaces/{ns}/serviceaccounts",
    "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "/apis/apps/v1/namespaces/{ns}/deployments",
    "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "/apis/apps/v1/namespaces/{ns}/replicasets",
    "/apis/batch/v1/namespaces/{ns}/jobs",
    "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "/apis/switchboard.dev/v1alpha1/namespaces/{ns}/edgepools",
    "/apis/switchboard.dev/v1alpha1/namespaces/{ns}/channels",
    "/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings",
    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
)


def left_behind(release: Release) -> list[str]:
    """Every object still labelled with the release, as kind-path/name."""
    found = []
    for kind in RELEASE_KINDS:
        path = kind.format(ns=NS)
        for item in release.node.api.request("GET", f"{path}?labelSelector={INSTANCE}")["items"]:
            found.append(f"{path.rsplit('/', 1)[-1]}/{item['metadata']['name']}")
    return sorted(found)


def test_helm_uninstall_leaves_nothing(release: Release) -> None:
    """Last. The user's own Channels are deleted first, while the operator runs (as
    docs/kubernetes.md says); then ``helm uninstall`` runs the pre-delete hook as a real
    Job, and nothing of the release is left but NATS's volumes, which Kubernetes keeps
    by design; deleting those as documented leaves nothing at all."""
    for name in ("flow", "handover"):
        release.node.api.request("DELETE", f"{CHANNELS.format(ns=NS)}/{name}")

    def channels_gone() -> bool:
        names = {
            c["metadata"]["name"]
            for c in release.node.api.request("GET", CHANNELS.format(ns=NS))["items"]
        }
        return not names & {"flow", "handover"}  # chat and news are the release's

    wait_until(release, channels_gone, 60, "finished Channels")
    started = time.monotonic()
    release.helm.uninstall(RELEASE, timeout=300)
    claims = [f"persistentvolumeclaims/data-sb-switchboard-nats-{i}" for i in range(3)]

    def only_volumes_left() -> list[str] | None:
        left = left_behind(release)
        return left if left == claims else None

    wait_until(release, only_volumes_left, 120, f"nothing left but {claims}")
    took = time.monotonic() - started
    pods = release.node.api.request("GET", f"/api/v1/namespaces/{NS}/pods")["items"]
    assert not pods, [p["metadata"]["name"] for p in pods]
    release.node.api.request(
        "DELETE",
        f"/api/v1/namespaces/{NS}/persistentvolumeclaims?labelSelector="
        f"{INSTANCE},app.kubernetes.io/component=nats",
    )
    wait_until(release, lambda: not left_behind(release), 60, "claims deleted")
    print(f"\nhelm uninstall: only NATS's volumes left after {took:.1f}s; none after deleting them")
