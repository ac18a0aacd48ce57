"""Stand-ins for the two node-side parts a control plane alone lacks.

No container runtime, kubelet or kube-proxy can run here (no Docker engine, no
root network namespaces), so these two small fakes take their place, and only
for the edge pods:

`EdgeKubelet` does what a kubelet would. The real ReplicaSet controller creates
and deletes the Pod objects; for each new pod this resolves the container's
environment from the pod spec exactly as a kubelet does (`envFrom` ConfigMaps,
`secretKeyRef`, `fieldRef: metadata.name`, `$(VAR)` references), starts one real
`switchboard edge` process with it, waits for the edge's `/readyz` (the pod's
readiness probe) and then marks the pod Running and Ready. When a pod is deleted
it sends the edge SIGTERM and keeps the pod Terminating with a finalizer of its
own until the edge has drained and exited, as a kubelet keeps a pod through its
grace period. It differs from a kubelet in these ways: the pods are never
scheduled to a node (the API server therefore deletes them with grace period 0,
which the finalizer makes up for), the edge listens on a free loopback port
instead of the container port (all pods share one host), no image, probe loop or
preStop hook runs (SIGTERM starts the same drain the preStop hook would).

`ServiceProxy` does what a Service's kube-proxy rules would: one stable address
that spreads new TCP connections over the Ready, not-terminating edge pods. It
also timestamps every accepted connection, which is how the tests measure the
fleet's reconnect rate during a rollout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard.natsserver import free_port, stop_process
from tests.operator.harness import ApiClient, pod_path

FINALIZER = "switchboard.dev/test-kubelet"
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class UnsupportedPodSpec(AssertionError):
    """The pod asks for something this stand-in kubelet does not do; it says what."""


async def container_env(api: ApiClient, namespace: str, pod: dict[str, Any]) -> dict[str, str]:
    """The first container's environment, resolved from the pod spec like a kubelet."""
    container = pod["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" not in source:
            raise UnsupportedPodSpec(f"envFrom {source}")
        name = source["configMapRef"]["name"]
        config_map = await api.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        if config_map is None:
            raise UnsupportedPodSpec(f"ConfigMap {name} is missing")
        env.update(config_map.get("data") or {})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = _REFERENCE.sub(lambda m: env.get(m[1], m[0]), var["value"])
            continue
        source = var.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = await api.get(f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}")
            if secret is None:
                raise UnsupportedPodSpec(f"Secret {ref['name']} is missing")
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod["metadata"]["name"]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[var["name"]] = namespace
        else:
            raise UnsupportedPodSpec(f"env {var}")
    return env


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(_ready, port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"edge on port {port} never became ready")
        await asyncio.sleep(0.1)


@dataclass
class RunningEdge:
    pod: str
    port: int
    process: subprocess.Popen[bytes]
    stopping: bool = False


@dataclass
class EdgeKubelet:
    api: ApiClient
    namespace: str
    labels: Mapping[str, str]
    log_dir: Path
    drain_wait_s: float = 60.0
    edges: dict[str, RunningEdge] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _stopping: set[asyncio.Task[None]] = field(default_factory=set)

    def ready_ports(self) -> list[int]:
        return [e.port for e in self.edges.values() if not e.stopping]

    def port_of(self, pod: str) -> int:
        return self.edges[pod].port

    async def __aenter__(self) -> EdgeKubelet:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._stopping):
            task.cancel()
        await asyncio.gather(
            *(asyncio.to_thread(stop_process, e.process, 30) for e in self.edges.values())
        )
        listing = await self.api.get(self._selector_path())
        for pod in (listing or {}).get("items", []):
            await self._release(pod["metadata"]["name"])

    def _selector_path(self) -> str:
        selector = ",".join(f"{k}={v}" for k, v in self.labels.items())
        return f"{pod_path(self.namespace)}?labelSelector={selector}"

    async def _loop(self) -> None:
        while True:
            listing = await self.api.get(self._selector_path())
            for pod in (listing or {}).get("items", []):
                await self._sync(pod)
            await asyncio.sleep(0.2)

    async def _sync(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        name = meta["name"]
        if meta.get("deletionTimestamp"):
            edge = self.edges.get(name)
            if edge is not None and not edge.stopping:
                edge.stopping = True
                task = asyncio.create_task(self._stop(edge))
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)
            elif edge is None and FINALIZER in (meta.get("finalizers") or []):
                await self._release(name)
            return
        if name in self.edges or name in self.exit_codes:
            return
        finalizers = meta.get("finalizers") or []
        await self.api.patch(
            pod_path(self.namespace, name), {"metadata": {"finalizers": [*finalizers, FINALIZER]}}
        )
        port = free_port()
        env = os.environ | await container_env(self.api, self.namespace, pod)
        env |= {"SB_EDGE_HOST": "127.0.0.1", "SB_EDGE_PORT": str(port)}
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
                [sys.executable, "-m", "switchboard", "edge"], env=env, stdout=log, stderr=log
            )
        self.edges[name] = RunningEdge(name, port, process, stopping=True)
        await _wait_ready(port, process, 30)
        self.edges[name].stopping = False
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ready = [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        await self.api.patch(
            pod_path(self.namespace, name) + "/status",
            {"status": {"phase": "Running", "conditions": ready, "startTime": now}},
        )

    async def _stop(self, edge: RunningEdge) -> None:
        code = await asyncio.to_thread(stop_process, edge.process, self.drain_wait_s)
        self.exit_codes[edge.pod] = code
        del self.edges[edge.pod]
        await self._release(edge.pod)

    async def _release(self, name: str) -> None:
        current = await self.api.get(pod_path(self.namespace, name))
        if current is None:
            return
        finalizers = current["metadata"].get("finalizers") or []
        if FINALIZER in finalizers:
            left = [f for f in finalizers if f != FINALIZER]
            await self.api.patch(pod_path(self.namespace, name), {"metadata": {"finalizers": left}})


def peak_rate(times: list[float], window_s: float = 1.0) -> float:
    """The most events in any half-open window of `window_s`, per second."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best / window_s


class ServiceProxy:
    """A TCP front for the edges; timestamps each new connection (the reconnect rate)."""

    def __init__(self, kubelet: EdgeKubelet) -> None:
        self._kubelet = kubelet
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.accepted: list[float] = []

    async def __aenter__(self) -> ServiceProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(time.monotonic())
        ports = self._kubelet.ready_ports()
        try:
            if not ports:
                raise ConnectionRefusedError("no ready edge")
            port = ports[next(self._turn) % len(ports)]
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            dst.close()
