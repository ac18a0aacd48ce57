"""Stand-ins for the two node-side parts a control plane alone lacks.

No container runtime, kubelet or kube-proxy can run here (no Docker engine, no
root network namespaces), so these two small fakes take their place, and only
for the release's edge pods and its pre-delete hook pods:

`StandInKubelet` does what a kubelet would. The real controllers (ReplicaSet,
Job) create and delete the Pod objects; for each new pod this resolves the
container's environment from the pod spec exactly as a kubelet does (`envFrom`
ConfigMaps, `secretKeyRef`, `fieldRef`, `$(VAR)` references), gives a pod that
mounts its ServiceAccount token a kubeconfig with that token (what an in-cluster
client finds), and runs the image's entrypoint as a real process:
`python -m switchboard <container args>`.

- A long-running pod (an edge) is marked Running (with its container's status:
  running since its process started) and Ready once its readiness probe passes:
  the probe's `httpGet` path on the container port it names (the admin port's
  `/readyz` in the chart). When it is deleted the edge gets SIGTERM, and a
  finalizer of this kubelet's keeps the pod Terminating until the edge has
  drained and exited, as a kubelet keeps a pod through its grace period.
- A run-to-completion pod (`restartPolicy: Never`, the hook Job's) is marked
  Succeeded or Failed by its exit code, which the Job controller then counts.

It differs from a kubelet in these ways: the pods are never scheduled to a node
(the API server therefore deletes them with grace period 0, which the finalizer
makes up for), an edge listens on free loopback ports instead of its container
ports (all pods share one host: each container port the pod declares, the client
port `SB_EDGE_PORT` and the admin port `SB_EDGE_ADMIN_PORT`, gets its own), the
readiness probe is asked until it first passes rather than in a loop, and no image
or preStop hook runs (SIGTERM starts the same drain the preStop hook would).

With `nats_links`, each edge pod reaches NATS through a `NatsLink` of its own (its
`SB_EDGE_NATS_URL` pointed at it), which a test can cut: a network partition of that
pod alone, which a node's network, not its kubelet, would cause.

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
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard.cli.natsserver import free_port, stop_process
from switchboard_operator.kube import label_selector
from tests.operator.harness import ApiClient, pod_path

FINALIZER = "switchboard.dev/test-kubelet"
COMPONENT = "app.kubernetes.io/component"
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


# The container ports an edge declares, by the variable that tells it where to listen.
EDGE_PORT_VARIABLES = ("SB_EDGE_PORT", "SB_EDGE_ADMIN_PORT")


def edge_ports(container: dict[str, Any], env: Mapping[str, str]) -> dict[str, int]:
    """A free loopback port for each port the edge container declares, by variable
    (the container port is matched to the variable that names the same number)."""
    by_number = {env.get(variable, ""): variable for variable in EDGE_PORT_VARIABLES}
    ports: dict[str, int] = {}
    for declared in container.get("ports") or []:
        variable = by_number.get(str(declared["containerPort"]))
        if variable is None:
            raise UnsupportedPodSpec(f"container port {declared} is no edge port")
        ports[variable] = free_port()
    missing = set(EDGE_PORT_VARIABLES) - set(ports)
    if missing:
        raise UnsupportedPodSpec(f"the edge container declares no port for {sorted(missing)}")
    return ports


def readiness_url(
    container: dict[str, Any], env: Mapping[str, str], ports: Mapping[str, int]
) -> str:
    """The readiness probe's URL on this host: its path, on the loopback port that
    stands for the container port it names (by name or number)."""
    probe = container.get("readinessProbe") or {}
    get = probe.get("httpGet")
    if get is None:
        raise UnsupportedPodSpec(f"readiness probe {probe} (only httpGet is run)")
    declared = {str(p["containerPort"]): p for p in container.get("ports") or []}
    named = {p.get("name"): number for number, p in declared.items()}
    number = named.get(get["port"], str(get["port"]))
    variable = next((v for v in EDGE_PORT_VARIABLES if env.get(v) == number), None)
    if number not in declared or variable is None:
        raise UnsupportedPodSpec(f"readiness probe port {get['port']!r} is not an edge port")
    return f"http://127.0.0.1:{ports[variable]}{get.get('path', '/')}"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(200 <= response.status < 400)  # a kubelet's success
    except OSError:
        return False


async def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(_ready, url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"edge never became ready: {url}")
        await asyncio.sleep(0.1)


class NatsLink:
    """One edge pod's own TCP path to NATS, which a test can cut: a network partition
    of that pod alone (the others keep theirs). Cut, it closes its connections and
    refuses new ones until it is mended."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.is_cut = False

    async def start(self) -> NatsLink:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self.is_cut = True
        for writer in list(self._writers):
            writer.transport.abort()

    def mend(self) -> None:
        self.is_cut = False

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}


def through_link(nats_url: str, link_port: int) -> str:
    """`nats_url` (one server) pointed at a NatsLink's port, the rest kept."""
    parts = urllib.parse.urlsplit(nats_url)
    assert "," not in nats_url and parts.hostname, f"one NATS server expected: {nats_url}"
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{link_port}" if userinfo else f"127.0.0.1:{link_port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass
class RunningPod:
    pod: str
    process: subprocess.Popen[bytes]
    port: int | None = None  # an edge's loopback client port
    admin_port: int | None = None  # and its admin port
    stopping: bool = True  # not (yet, or no longer) serving
    container: dict[str, Any] = field(default_factory=dict)  # its pod's (first) container
    started_at: str = ""  # when its process started (RFC 3339, as a kubelet reports it)


@dataclass
class StandInKubelet:
    api: ApiClient
    namespace: str
    labels: Mapping[str, str]  # the release's pods: selected further by component
    log_dir: Path
    kubeconfig_for: Callable[[str], Path]  # ServiceAccount name → its kubeconfig
    components: tuple[str, ...] = ("edge", "cleanup")
    drain_wait_s: float = 60.0
    nats_links: bool = False  # each edge pod reaches NATS through its own NatsLink
    links: dict[str, NatsLink] = field(default_factory=dict)  # edge pod → its link
    running: dict[str, RunningPod] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _waiting: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def edges(self) -> dict[str, RunningPod]:
        return {name: pod for name, pod in self.running.items() if pod.port is not None}

    def ready_ports(self) -> list[int]:
        return [p.port for p in self.edges.values() if p.port is not None and not p.stopping]

    def port_of(self, pod: str) -> int:
        port = self.running[pod].port
        assert port is not None, f"{pod} is not an edge"
        return port

    def admin_port_of(self, pod: str) -> int:
        port = self.running[pod].admin_port
        assert port is not None, f"{pod} is not an edge"
        return port

    async def __aenter__(self) -> StandInKubelet:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._waiting):
            task.cancel()
        await asyncio.gather(
            *(asyncio.to_thread(stop_process, p.process, 30) for p in self.running.values())
        )
        for pod in await self._pods():
            await self._release(pod["metadata"]["name"])
        for link in self.links.values():
            link.close()

    async def _pods(self) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = []
        for component in self.components:
            selector = label_selector({**self.labels, COMPONENT: component})
            listing = await self.api.get(f"{pod_path(self.namespace)}?labelSelector={selector}")
            pods += (listing or {}).get("items", [])
        return pods

    async def _loop(self) -> None:
        while True:
            for pod in await self._pods():
                try:
                    await self._sync(pod)
                except Exception as exc:  # reported by check(), not lost in a dead task
                    self.errors.append(f"{pod['metadata']['name']}: {exc!r}")
            await asyncio.sleep(0.2)

    def check(self) -> None:
        """Raise what went wrong running pods, if anything did."""
        if self.errors:
            raise AssertionError(f"the stand-in kubelet failed: {self.errors}")

    async def _sync(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        name = meta["name"]
        if meta.get("deletionTimestamp"):
            running = self.running.get(name)
            if running is not None and running.port is not None and not running.stopping:
                running.stopping = True
                self._spawn(self._stop(running))
            elif running is None and FINALIZER in (meta.get("finalizers") or []):
                await self._release(name)
            return
        if name in self.running or name in self.exit_codes:
            return
        spec = pod["spec"]
        container = spec["containers"][0]
        env = os.environ | await container_env(self.api, self.namespace, pod)
        if spec.get("automountServiceAccountToken", True) and spec.get("serviceAccountName"):
            env["KUBECONFIG"] = str(self.kubeconfig_for(spec["serviceAccountName"]))
        args = list(container.get("args") or [])
        completes = spec.get("restartPolicy") == "Never"
        if not completes:  # held until its process has exited, like a grace period
            finalizers = meta.get("finalizers") or []
            await self.api.patch(
                pod_path(self.namespace, name),
                {"metadata": {"finalizers": [*finalizers, FINALIZER]}},
            )
        ready_url = None
        ports: dict[str, int] = {}
        if args[:1] == ["edge"]:
            ports = edge_ports(container, env)
            ready_url = readiness_url(container, env, ports)
            env |= {"SB_EDGE_HOST": "127.0.0.1", "SB_EDGE_ADMIN_HOST": "127.0.0.1"}
            env |= {variable: str(port) for variable, port in ports.items()}
            if self.nats_links:
                upstream = urllib.parse.urlsplit(env["SB_EDGE_NATS_URL"])
                assert upstream.hostname and upstream.port, env["SB_EDGE_NATS_URL"]
                link = await NatsLink(upstream.hostname, upstream.port).start()
                self.links[name] = link
                env["SB_EDGE_NATS_URL"] = through_link(env["SB_EDGE_NATS_URL"], link.port)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
                [sys.executable, "-m", "switchboard", *args], env=env, stdout=log, stderr=log
            )
        running = RunningPod(
            name,
            process,
            ports.get("SB_EDGE_PORT"),
            ports.get("SB_EDGE_ADMIN_PORT"),
            container=container,
            started_at=_rfc3339_now(),
        )
        self.running[name] = running
        if completes:
            await self._status(name, "Running")
            self._spawn(self._complete(running))
            return
        if ready_url is not None:
            await _wait_ready(ready_url, process, 30)
        running.stopping = False
        await self._status(name, "Running", ready=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _status(self, name: str, phase: str, *, ready: bool = False) -> None:
        now = _rfc3339_now()
        conditions = [
            {
                "type": t,
                "status": "True" if ready or t == "PodScheduled" else "False",
                "lastTransitionTime": now,
            }
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        status: dict[str, Any] = {"phase": phase, "conditions": conditions, "startTime": now}
        running = self.running.get(name)
        if phase == "Running" and running is not None:  # the container's own status, too
            status["containerStatuses"] = [
                {
                    "name": running.container.get("name", ""),
                    "image": running.container.get("image", ""),
                    "imageID": "",
                    "ready": ready,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": running.started_at}},
                }
            ]
        await self.api.patch(pod_path(self.namespace, name) + "/status", {"status": status})

    async def _complete(self, running: RunningPod) -> None:
        code = await asyncio.to_thread(running.process.wait)
        self.exit_codes[running.pod] = code
        del self.running[running.pod]
        await self._status(running.pod, "Succeeded" if code == 0 else "Failed")

    async def _stop(self, running: RunningPod) -> None:
        code = await asyncio.to_thread(stop_process, running.process, self.drain_wait_s)
        self.exit_codes[running.pod] = code
        del self.running[running.pod]
        link = self.links.pop(running.pod, None)
        if link is not None:
            link.close()
        await self._release(running.pod)

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

    def __init__(self, kubelet: StandInKubelet) -> None:
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


def _rfc3339_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
