"""Rebalancing after a scale-up on the real control plane (issue 21).

The same real parts as test_cluster.py (etcd, kube-apiserver, kube-controller-manager,
the chart installed by the Helm engine, `switchboard operator` with the chart's
ServiceAccount token, here handed out by an exec credential plugin of its
kubeconfig, one `switchboard edge` process per pod, nats-server) and the
same stand-ins (tests/e2e/kubelet.py: a kubelet for the edge pods, a TCP proxy for
the Service, which spreads new connections round-robin over the Ready pods), in a
release of its own.

3 edge pods carry 300 clients on a history channel while a backend publishes; the
EdgePool's minReplicas goes to 6. The operator scales up, and once the new pods are
Ready it asks the 3 hot ones to shed their excess. The test measures how long until
the busiest pod is within maxImbalance of the mean, how many connections moved, and
the pace, and checks that no client lost or saw twice any message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import helm_python as helm
import nats
import pytest

from switchboard.cli.natsserver import NatsServer
from switchboard.client.resilient import ResilientClient
from switchboard.contract.permissions import ROLES
from switchboard.contract.tokens import mint_token
from switchboard_operator.kube import label_selector
from tests.controlplane.cluster import ControlPlane
from tests.e2e.kubeconfig import api_client, exec_plugin_kubeconfig
from tests.e2e.kubelet import ServiceProxy, StandInKubelet, peak_rate
from tests.operator.harness import (
    ApiClient,
    OperatorProcess,
    channel_path,
    edgepool_path,
    eventually,
    pod_path,
    ready,
    run_operator,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "switchboard"
NS = "sb-rebalance"
RELEASE = "rb"
EDGE = "rb-switchboard-edge"
OPERATOR_SA = "rb-switchboard-operator"
RELEASE_LABELS = {"app.kubernetes.io/name": "switchboard", "app.kubernetes.io/instance": RELEASE}
EDGE_LABELS = RELEASE_LABELS | {"app.kubernetes.io/component": "edge"}
NATS_SECRET = "nats-rebalance-credentials"
CLIENTS = 300
BUDGET = 30  # rebalance.reconnectsPerSecond, for all sheds together
MAX_IMBALANCE = 0.2
JITTER_MS = 300
BALANCED_WITHIN_S = 60.0  # from the 6 pods being Ready: settle, ~150 moves at 30/s, jitter
CHANNEL = "feed:room"
SUBJECT = "sb.ch.feed.room"
END = "end"

pytestmark = pytest.mark.timeout(300)


def chart_values(nats_url: str) -> dict[str, Any]:
    return {
        "nats": {"enabled": False, "url": nats_url, "auth": {"existingSecret": NATS_SECRET}},
        "channels": {"examples": False, "extra": {"feed": {"history": {"size": 5000}}}},
        "edge": {
            "config": {
                "stats_interval_s": 0.5,
                "reconnect_jitter_ms": JITTER_MS,
                "log_level": "DEBUG",  # each move is logged, timed by the edge
            }
        },
        "edgePool": {
            "minReplicas": 3,
            "maxReplicas": 6,
            "targetConnectionsPerPod": 1000,  # 300 clients: 3 pods until minReplicas says 6
            "drain": {"reconnectsPerSecond": 60, "timeoutSeconds": 30},
            "rebalance": {
                "enabled": True,
                "maxImbalance": MAX_IMBALANCE,
                "reconnectsPerSecond": BUDGET,
            },
        },
        "operator": {"config": {"scale_interval_s": 0.5, "status_interval_s": 1}},
    }


@dataclass
class Stack:
    admin: ApiClient
    operator: OperatorProcess
    kubelet: StandInKubelet
    proxy: ServiceProxy
    nats: NatsServer
    jwt_secret: str
    plugin_runs: Path  # a line per run of the operator's exec credential plugin

    async def running(self, count: int) -> list[str] | None:
        """The edge pods, oldest first, once exactly `count` run and are Ready."""
        self.kubelet.check()
        selector = label_selector(EDGE_LABELS)
        listing = await self.admin.get(f"{pod_path(NS)}?labelSelector={selector}")
        pods = sorted(listing["items"], key=lambda p: p["metadata"]["creationTimestamp"])
        names = [p["metadata"]["name"] for p in pods]
        settled = not any(p["metadata"].get("deletionTimestamp") for p in pods)
        serving = len(self.kubelet.ready_ports()) == count and set(names) == set(self.kubelet.edges)
        return names if settled and serving and len(names) == count else None


@pytest.fixture(scope="module")
async def stack(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    logs = tmp_path_factory.mktemp("rebalance")
    admin_kubeconfig = control_plane.admin_kubeconfig()
    with NatsServer(auth=True) as nats_server:
        config = helm.Config(kubeconfig_path=admin_kubeconfig, namespace=NS)
        async with api_client(admin_kubeconfig) as admin:
            await admin.create("/api/v1/namespaces", {"metadata": {"name": NS}})
            passwords = {f"{role}-password": nats_server.credentials(role)[1] for role in ROLES}
            secret = {"metadata": {"name": NATS_SECRET}, "stringData": passwords}
            await admin.create(f"/api/v1/namespaces/{NS}/secrets", secret)
            await asyncio.to_thread(
                config.install,
                CHART,
                RELEASE,
                chart_values(nats_server.address),
                namespace=NS,
                timeout=120,
            )
            # The operator logs in through an exec credential plugin (as on EKS, GKE, AKS)
            # that hands out its ServiceAccount's token: kopf and its own calls alike.
            operator_kubeconfig, plugin_runs = exec_plugin_kubeconfig(
                control_plane.kubeconfig_for_service_account(NS, OPERATOR_SA), logs
            )
            operator_config = await admin.get(f"/api/v1/namespaces/{NS}/configmaps/{OPERATOR_SA}")
            auth = await admin.get(f"/api/v1/namespaces/{NS}/secrets/rb-switchboard-auth")
            async with (
                StandInKubelet(
                    admin,
                    NS,
                    RELEASE_LABELS,
                    logs,
                    partial(control_plane.kubeconfig_for_service_account, NS),
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
                    admin,
                    operator,
                    kubelet,
                    proxy,
                    nats_server,
                    base64.b64decode(auth["data"]["jwt-secret"]).decode(),
                    plugin_runs,
                )
                await asyncio.to_thread(config.uninstall, RELEASE, timeout=120)
        config.close()


async def _edge_counts(kv: Any, pods: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for pod in pods:
        try:
            out[pod] = json.loads((await kv.get(pod)).value)
        except Exception:  # not reported yet
            out[pod] = {"connections": -1, "shedding": True}
    return out


def _spread(stats: dict[str, dict[str, Any]]) -> float:
    counts = [s["connections"] for s in stats.values()]
    mean = sum(counts) / len(counts)
    return max(counts) / mean - 1 if mean > 0 else 0.0


async def test_scale_up_rebalances_within_the_budget_and_loses_nothing(stack: Stack) -> None:
    old = await eventually(lambda: stack.running(3), timeout=90)
    await eventually(lambda: _channel_ready(stack, "feed"), timeout=30)  # its history stream
    clients = [
        ResilientClient([stack.proxy.ws_url], partial(_token, stack, i)) for i in range(CLIENTS)
    ]
    for client in clients:
        await client.start()
        await client.subscribe(CHANNEL)
    nc = await nats.connect(stack.nats.url_for("operator"))  # the test reads sb_edges
    kv = await nc.jetstream().key_value("sb_edges")

    async def even_on_old() -> bool:
        stats = await _edge_counts(kv, old)
        counts = [int(s["connections"]) for s in stats.values()]
        return sum(counts) == CLIENTS and min(counts) > 0

    try:
        await eventually(even_on_old, timeout=30)  # the Service spread them ~100 each
    except TimeoutError:
        raise AssertionError(f"not spread: {await _edge_counts(kv, old)}") from None

    moves: list[float] = []  # a `reconnect` frame reached a client (then 1001)
    resumes: list[float] = []  # a moved client's session was restored on a pod
    collectors = [asyncio.create_task(_collect(c, moves, resumes)) for c in clients]
    publisher = await nats.connect(stack.nats.url)  # a backend
    published = 0
    balanced = asyncio.Event()

    async def publish() -> None:
        nonlocal published
        tail = 10  # a little more after the pool is balanced
        while tail:
            await publisher.publish(SUBJECT, json.dumps(published).encode())
            published += 1
            tail -= balanced.is_set()
            await asyncio.sleep(1 / 5)
        await publisher.publish(SUBJECT, json.dumps(END).encode())

    publishing = asyncio.create_task(publish())
    await asyncio.sleep(1)
    scaled_at = time.monotonic()
    await stack.admin.patch(edgepool_path(NS, EDGE), {"spec": {"minReplicas": 6}})
    pods = await eventually(lambda: stack.running(6), timeout=90)
    ready_at = time.monotonic()
    new = [p for p in pods if p not in old]

    async def within_bounds() -> dict[str, dict[str, Any]] | None:
        stats = await _edge_counts(kv, pods)
        settled = not any(s["shedding"] for s in stats.values())
        total = sum(s["connections"] for s in stats.values())
        if settled and total == CLIENTS and _spread(stats) <= MAX_IMBALANCE:
            return stats
        return None

    try:
        final = await eventually(within_bounds, timeout=BALANCED_WITHIN_S)
    except TimeoutError:
        stats = await _edge_counts(kv, pods)
        raise AssertionError(f"not balanced: {stats}\n{stack.operator.log()[-3000:]}") from None
    balanced_at = time.monotonic()
    balanced.set()
    await publishing
    await publisher.close()
    received = await asyncio.wait_for(asyncio.gather(*collectors), 60)

    for index, got in enumerate(received):
        assert got == list(range(published)), index  # all, exactly once, in order
    assert sum(c.duplicates for c in clients) == 0  # none even arrived twice
    counts = {pod: final[pod]["connections"] for pod in pods}
    # Moved clients landed on the new pods: shedding pods refused them.
    assert sum(counts[p] for p in new) >= CLIENTS / 2 * (1 - MAX_IMBALANCE), counts
    moved = len(moves)
    assert moved == sum(c.resumed for c in clients)  # every moved client resumed
    assert moved <= CLIENTS / 2 * 1.2, moved  # ~150 needed: few moved twice
    moved_at = _logged(stack, old, "moving")  # when the edges told clients to move
    assert len(moved_at) == moved
    move_peak = peak_rate(moved_at)
    seen_peak = peak_rate(moves)
    # Moved clients arriving at the edges (their `connected` lines: no other client
    # connects meanwhile), timed by the edges, not by this busy test process.
    arrived = [t for t in _logged(stack, pods, "connected") if t >= min(moved_at)]
    assert len(arrived) == moved
    resume_peak = peak_rate(arrived)
    resume_peak_2s = peak_rate(arrived, window_s=2.0)
    seen_resume_peak = peak_rate(resumes)
    attempts_peak = peak_rate([t for t in stack.proxy.accepted if t >= ready_at])
    pool = await stack.admin.get(edgepool_path(NS, EDGE))
    print(
        f"\nrebalance 3 → 6 pods, {CLIENTS} clients: Ready {ready_at - scaled_at:.1f}s after "
        f"the scale-up, balanced {balanced_at - ready_at:.1f}s after that; {moved} moved; "
        f"counts {sorted(counts.values())}; peak moves {move_peak:.0f}/s at the edges "
        f"({seen_peak:.0f}/s as the busy test process read them), peak resumes at the edges "
        f"{resume_peak:.0f}/s in 1 s, {resume_peak_2s:.1f}/s over 2 s ({seen_resume_peak:.0f}/s "
        f"as read by the test), peak connection attempts at the Service {attempts_peak:.0f}/s "
        f"(budget {BUDGET}/s); {published} messages, 0 lost, 0 duplicated; status "
        f"imbalance {pool['status'].get('imbalance')}"
    )
    # Each shedding edge paces itself at its share; one move of slack for their timers.
    assert move_peak <= BUDGET + 1, move_peak
    # Clients come back 0..jitter after their move (plus a retry's backoff when a
    # shedding pod refused them); over 2 s, as the rollout test does: 300 clients on
    # one loaded event loop read their `reconnect` frames in bunches.
    assert resume_peak_2s <= BUDGET * (1 + JITTER_MS / 1000) + 1, resume_peak_2s
    events = await stack.admin.get(f"/api/v1/namespaces/{NS}/events")
    reasons = [e.get("reason") for e in events["items"]]
    assert "Rebalancing" in reasons and "Rebalanced" in reasons, reasons
    rebalancing = [e["message"] for e in events["items"] if e.get("reason") == "Rebalancing"]
    assert any("from " + old[0] in m for m in rebalancing), rebalancing
    status = await eventually(lambda: _status_balanced(stack), timeout=10)
    assert status["imbalance"] <= MAX_IMBALANCE and status["lastRebalanceTime"]
    for client in clients:
        await client.close()
    await nc.close()


def _logged(stack: Stack, pods: list[str], message: str) -> list[float]:
    """The edges' own times of a log line (`moving`: a move, a debug line;
    `connected`: a connection accepted)."""
    times = []
    for pod in pods:
        for line in (stack.kubelet.log_dir / f"{pod}.log").read_text().splitlines():
            if f'"msg": "{message}"' in line:
                times.append(float(json.loads(line)["ts"]))
    return times


async def _channel_ready(stack: Stack, name: str) -> bool:
    channel = await stack.admin.get(channel_path(NS, name))
    return (ready(channel) or {}).get("status") == "True"


async def _status_balanced(stack: Stack) -> dict[str, Any] | None:
    status: dict[str, Any] = (await stack.admin.get(edgepool_path(NS, EDGE)))["status"]
    return status if status.get("imbalance", 1) <= MAX_IMBALANCE else None


async def _token(stack: Stack, index: int) -> str:
    return mint_token(stack.jwt_secret, f"listener-{index}")


async def _collect(client: ResilientClient, moves: list[float], resumes: list[float]) -> list[int]:
    got: list[int] = []
    async for msg in client.events():
        if msg["type"] == "reconnect":
            moves.append(time.monotonic())
        elif str(msg.get("id", "")).startswith("resume:"):
            resumes.append(time.monotonic())
        elif msg["type"] == "event":
            if msg["payload"]["data"] == END:
                break
            got.append(msg["payload"]["data"])
    return got
