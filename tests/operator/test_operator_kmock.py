"""The real operator (a kopf process) against kmock, a real nats-server and real edges.

kmock is kopf's author's in-memory Kubernetes API server. What it does NOT model,
and so what these tests cannot show (the control-plane tests do):
- no CRD schema: defaults and validation are not applied by the server (the
  operator validates with its own models, so that path is exercised here);
- no label selectors on lists (the operator filters pods by labels itself);
- no controllers: nothing turns a Deployment's replicas into pods, and no
  ReplicaSet reads pod-deletion-cost; the tests create pods themselves;
- no RBAC, no resourceVersion bookkeeping (kopf's JSON patches test
  `resourceVersion`, so the tests create objects with one; it never changes),
  and subresources patch the main object.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import websockets
from nats.js.errors import NotFoundError

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client, SwitchboardError
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import next_event
from tests.operator.harness import (
    ApiClient,
    OperatorProcess,
    channel_path,
    deployment_path,
    edgepool_path,
    eventually,
    kmock_api,
    kv_get,
    pod_path,
    ready,
    run_operator,
    write_kubeconfig,
)

NS = "switchboard"
FAST_STATS = {"stats_interval_s": "0.3", "new_connections_per_s": "5000"}
COST = "controller.kubernetes.io/pod-deletion-cost"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[ApiClient, Path]]:
    async with kmock_api() as (_, url), aiohttp.ClientSession() as session:
        yield ApiClient(session, url), write_kubeconfig(tmp_path / "kubeconfig", url)


@pytest.fixture
async def operator(
    api: tuple[ApiClient, Path], nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[OperatorProcess]:
    async with run_operator(api[1], nats_server.url_for("operator"), NS, tmp_path) as process:
        yield process


async def test_channel_applied_enforced_reported_and_cleaned_up(
    api: tuple[ApiClient, Path],
    operator: OperatorProcess,
    nats_server: NatsServer,
    edge_factory: EdgeFactory,
) -> None:
    client_api, _ = api
    edge = edge_factory.start("op-chan-edge", **FAST_STATS)
    channel = {
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "Channel",
        "metadata": {"name": "opnews", "namespace": NS, "resourceVersion": "1"},
        "spec": {"history": {"size": 10, "ttl": "1m"}, "publish": {"clients": False}},
    }
    await client_api.create(channel_path(NS), channel)
    nc = await nats.connect(nats_server.url_for("operator"))  # reads what it wrote
    js = nc.jetstream()
    try:
        # The KV entry and the stream exist, and the edge enforces the policy.
        entry = await eventually(lambda: kv_get(js, "opnews"))
        assert json.loads(entry)["publish"]["clients"] is False
        info = await js.stream_info("SB_CH_opnews")
        assert info.config.max_msgs_per_subject == 10
        assert info.config.max_age == 60

        ws = await Client.connect(edge.ws_url, token=token("carol"))
        await _until_forbidden(ws, "opnews:today")
        await ws.subscribe("opnews:today")

        # Status: Ready, subscribers, last offset and epoch; an event was posted.
        backend = await nats.connect(nats_server.url)  # apps publish, not the operator
        await backend.jetstream().publish("sb.ch.opnews.today", b'{"n": 1}')
        await backend.close()
        assert (await next_event(ws))["payload"]["offset"] == 1

        async def status_current() -> Any:
            obj = await client_api.get(channel_path(NS, "opnews"))
            status = obj.get("status") or {}
            done = status.get("subscribers") == 1 and status.get("lastOffset") == 1
            return obj if done and (ready(obj) or {}).get("status") == "True" else None

        obj = await eventually(status_current)
        assert obj["status"]["epoch"]
        assert (ready(obj) or {}).get("reason") == "Applied"
        assert "switchboard.dev/cleanup" in obj["metadata"]["finalizers"]
        events = await client_api.get(f"/api/v1/namespaces/{NS}/events")
        reasons = {e.get("reason") for e in events["items"]}
        assert "Applied" in reasons

        # Delete: the finalizer runs, config and stream go, the edge stops enforcing.
        await client_api.delete(channel_path(NS, "opnews"))
        await eventually(lambda: _gone(client_api, channel_path(NS, "opnews")))
        assert await kv_get(js, "opnews") is None
        with pytest.raises(NotFoundError):
            await js.stream_info("SB_CH_opnews")
        await _until_allowed(ws, "opnews:today")
        await ws.close()
    finally:
        await nc.close()
        edge.stop()


async def test_invalid_spec_is_reported_not_applied(
    api: tuple[ApiClient, Path], operator: OperatorProcess, nats_server: NatsServer
) -> None:
    """kmock has no CRD schema, so the operator's own validation must catch this."""
    client_api, _ = api
    bad = {
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "Channel",
        "metadata": {"name": "opbad", "namespace": NS, "resourceVersion": "1"},
        "spec": {"history": {"size": 0}},
    }
    await client_api.create(channel_path(NS), bad)

    async def refused() -> Any:
        condition = ready(await client_api.get(channel_path(NS, "opbad")))
        return condition if condition and condition["status"] == "False" else None

    condition = await eventually(refused)
    assert condition["reason"] == "InvalidSpec"
    assert "spec.history.size" in condition["message"]
    nc = await nats.connect(nats_server.url_for("operator"))
    try:
        assert await kv_get(nc.jetstream(), "opbad") is None
    finally:
        await nc.close()


async def test_deletion_costs_follow_connections_and_replicas_rise(
    api: tuple[ApiClient, Path], operator: OperatorProcess, edge_factory: EdgeFactory
) -> None:
    client_api, _ = api
    labels = {"app": "sb-edge-costs"}
    names = ["costs-a", "costs-b", "costs-c"]
    await _deployment(client_api, "edge-costs", labels, replicas=2, pods=names)
    edges = [edge_factory.start(name, **FAST_STATS) for name in names]
    sockets: list[Any] = []
    try:
        for edge, count in zip(edges, (900, 100, 20), strict=True):
            sockets += await _open(edge, count)
        # Let every edge report its final count: small later changes are not patched.
        await asyncio.sleep(1.0)
        await client_api.create(edgepool_path(NS), _pool("costs", "edge-costs", target=500))

        async def costs() -> Any:
            got = {}
            for name in names:
                pod = await client_api.get(pod_path(NS, name))
                got[name] = (pod["metadata"].get("annotations") or {}).get(COST)
            return got if got == {"costs-a": "900", "costs-b": "100", "costs-c": "20"} else None

        await eventually(costs, timeout=15)
        # 1020 connections / 500 per pod → 3 replicas (from 2), at once.
        await eventually(lambda: _replicas(client_api, "edge-costs", 3), timeout=10)

        sockets += await _open(edges[2], 500)  # 1520 → 4 replicas; costs-c's cost follows
        await eventually(lambda: _replicas(client_api, "edge-costs", 4), timeout=10)

        async def pool_status() -> Any:
            status = (await client_api.get(edgepool_path(NS, "costs")) or {}).get("status") or {}
            wanted = {"connections": 1520, "desiredReplicas": 4, "replicas": 4}
            return status if all(status.get(k) == v for k, v in wanted.items()) else None

        status = await eventually(pool_status)
        assert status["lastScaleTime"]
        pod = await eventually(lambda: _cost_of(client_api, "costs-c", "520"))
        assert pod
    finally:
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
        for edge in edges:
            edge.stop()


async def test_two_draining_edges_each_get_half_the_budget(
    api: tuple[ApiClient, Path],
    operator: OperatorProcess,
    edge_factory: EdgeFactory,
    nats_server: NatsServer,
) -> None:
    client_api, _ = api
    labels = {"app": "sb-edge-drain"}
    names = ["drain-a", "drain-b"]
    await _deployment(client_api, "edge-drain", labels, replicas=2, pods=names)
    settings = FAST_STATS | {"drain_timeout_s": "60", "reconnect_jitter_ms": "0"}
    edges = [edge_factory.start(name, **settings) for name in names]
    per_edge = 30
    try:
        sockets = {edge.name: await _open(edge, per_edge) for edge in edges}
        await client_api.create(
            edgepool_path(NS), _pool("drains", "edge-drain", target=1000, budget=20)
        )
        await asyncio.sleep(1.5)  # the pool is refreshed (its pods known) before drains ask

        closed_at: dict[str, list[float]] = {edge.name: [] for edge in edges}

        async def watch(name: str, ws: Any) -> None:
            await ws.wait_closed()
            assert ws.close_code == 1001
            closed_at[name].append(time.monotonic())

        watchers = [
            asyncio.create_task(watch(name, ws)) for name, socks in sockets.items() for ws in socks
        ]
        nc = await nats.connect(nats_server.url_for("operator"))  # what kubectl drain triggers
        try:
            started = time.monotonic()
            await asyncio.gather(
                *(nc.request(f"sb.edge.{name}.ctl", b'{"command": "drain"}') for name in names)
            )
        finally:
            await nc.close()
        await asyncio.wait_for(asyncio.gather(*watchers), timeout=30)

        # 20/s split in two: 10/s each, so 30 connections take ~3 s per edge. Undivided
        # (20/s each) they would take 1.5 s.
        for name in names:
            spent = max(closed_at[name]) - started
            assert spent > 2.2, (name, spent)
        grants = operator.metrics()
        for name in names:
            assert grants[f'switchboard_operator_drain_grant{{pod="{name}"}}'] == 10
    finally:
        for edge in edges:
            edge.stop()


# -- helpers ------------------------------------------------------------------


async def _gone(client_api: ApiClient, path: str) -> bool:
    return await client_api.get(path) is None


async def _until_forbidden(ws: Client, channel: str) -> None:
    async def forbidden() -> bool:
        try:
            await ws.publish(channel, "x")
        except SwitchboardError as exc:
            return exc.code == "forbidden"
        return False

    await eventually(forbidden)


async def _until_allowed(ws: Client, channel: str) -> None:
    async def allowed() -> bool:
        try:
            await ws.publish(channel, "x")
        except SwitchboardError:
            return False
        return True

    await eventually(allowed)


async def _deployment(
    client_api: ApiClient, name: str, labels: dict[str, str], replicas: int, pods: list[str]
) -> None:
    await client_api.create(
        deployment_path(NS),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}},
        },
    )
    for pod in [*pods, f"{name}-not-ours"]:
        pod_labels = labels if pod in pods else {"app": "something-else"}
        await client_api.create(
            pod_path(NS),
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod,
                    "namespace": NS,
                    "labels": pod_labels,
                    "resourceVersion": "1",
                },
            },
        )


def _pool(name: str, deployment: str, target: int, budget: int = 500) -> dict[str, Any]:
    return {
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "EdgePool",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"},
        "spec": {
            "deployment": deployment,
            "minReplicas": 1,
            "maxReplicas": 10,
            "targetConnectionsPerPod": target,
            "drain": {"reconnectsPerSecond": budget},
        },
    }


async def _replicas(client_api: ApiClient, deployment: str, want: int) -> bool:
    obj = await client_api.get(deployment_path(NS, deployment))
    return bool(obj["spec"]["replicas"] == want)


async def _cost_of(client_api: ApiClient, pod: str, want: str) -> bool:
    obj = await client_api.get(pod_path(NS, pod))
    return bool((obj["metadata"].get("annotations") or {}).get(COST) == want)


async def _open(edge: Edge, count: int) -> list[Any]:
    """`count` raw WebSocket connections to `edge`, opened 50 at a time."""
    sockets: list[Any] = []
    for start in range(0, count, 50):
        batch = min(50, count - start)
        sockets += await asyncio.gather(
            *(
                websockets.connect(
                    edge.ws_url,
                    subprotocols=[
                        websockets.Subprotocol("switchboard.v1"),
                        websockets.Subprotocol(f"bearer.{token('load')}"),
                    ],
                )
                for _ in range(batch)
            )
        )
    return sockets


@pytest.mark.parametrize(
    ("replicas", "reason", "message"),
    [
        (2, "InvalidSpec", "spec.history.replicas: Input should be 1, 3 or 5"),
        # the session's NATS is a single server: it cannot keep three copies
        (3, "ReplicasRefused", "NATS cannot keep 3 replicas"),
    ],
)
async def test_replicas_nats_cannot_keep_are_reported_not_applied(
    api: tuple[ApiClient, Path],
    operator: OperatorProcess,
    nats_server: NatsServer,
    replicas: int,
    reason: str,
    message: str,
) -> None:
    client_api, _ = api
    name = f"oprepl{replicas}"
    channel = {
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "Channel",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"},
        "spec": {"history": {"size": 10, "ttl": "1m", "replicas": replicas}},
    }
    await client_api.create(channel_path(NS), channel)

    async def refused() -> Any:
        condition = ready(await client_api.get(channel_path(NS, name)))
        return condition if condition and condition["status"] == "False" else None

    condition = await eventually(refused)
    assert condition["reason"] == reason
    assert message in condition["message"]
    nc = await nats.connect(nats_server.url_for("operator"))  # reads config and streams
    try:
        assert await kv_get(nc.jetstream(), name) is None
        with pytest.raises(NotFoundError):
            await nc.jetstream().stream_info(f"SB_CH_{name}")
    finally:
        await nc.close()
