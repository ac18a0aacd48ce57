"""Runs the real operator (`switchboard operator`, a kopf process) against an API server.

The tests talk to the API server over plain HTTP with `ApiClient`, so the same
test bodies work against kmock here and against a real kube-apiserver later.
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml

from edge.metrics import parse as parse_metrics
from switchboard.cli.launch import LocalProcess, free_port, switchboard_command, wait_for_port

GROUP_VERSION = "switchboard.dev/v1alpha1"
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


class ApiClient:
    """Create / read / patch / delete Kubernetes objects by path, as JSON."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/")

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(HTTP status, decoded body) of one call, whatever the status."""
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self._session.request(
            method, self._base + path, json=body, headers=headers
        ) as response:
            return response.status, await response.json(content_type=None)

    async def _send(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.call(method, path, body)
        if status == 404:
            return None
        if status >= 400:
            raise AssertionError(f"{method} {path}: HTTP {status}: {data}")
        return data

    async def create(self, path: str, body: dict[str, Any]) -> Any:
        return await self._send("POST", path, body)

    async def get(self, path: str) -> Any:
        return await self._send("GET", path)

    async def patch(self, path: str, body: dict[str, Any]) -> Any:
        return await self._send("PATCH", path, body)

    async def delete(self, path: str) -> Any:
        return await self._send("DELETE", path)


def channel_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP_VERSION}/namespaces/{namespace}/channels"
    return f"{base}/{name}" if name else base


def edgepool_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP_VERSION}/namespaces/{namespace}/edgepools"
    return f"{base}/{name}" if name else base


def deployment_path(namespace: str, name: str = "") -> str:
    base = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    return f"{base}/{name}" if name else base


def pod_path(namespace: str, name: str = "") -> str:
    base = f"/api/v1/namespaces/{namespace}/pods"
    return f"{base}/{name}" if name else base


@asynccontextmanager
async def kmock_api() -> AsyncIterator[tuple[kmock.KubernetesEmulator, str]]:
    """kmock's in-memory API server on a real port, with the resources we use declared
    for discovery (kopf finds Channel and EdgePool through it)."""
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        declared = {
            f"{GROUP_VERSION}/channels": ("Channel", {"status"}, True),
            f"{GROUP_VERSION}/edgepools": ("EdgePool", {"status"}, True),
            "apps/v1/deployments": ("Deployment", {"status", "scale"}, True),
            "v1/pods": ("Pod", {"status"}, True),
            "v1/events": ("Event", set(), True),
            # kopf waits for these two to appear in discovery before it starts watching.
            "v1/namespaces": ("Namespace", set(), False),
            "apiextensions.k8s.io/v1/customresourcedefinitions": (
                "CustomResourceDefinition",
                set(),
                False,
            ),
        }
        for key, (kind, subresources, namespaced) in declared.items():
            emulator.resources[key] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=VERBS, subresources=subresources
            )
        yield emulator, str(server.url)


def write_kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "test", "user": {}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class OperatorProcess:
    process: LocalProcess
    metrics_port: int
    log_path: Path

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return parse_metrics(response.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@asynccontextmanager
async def run_operator(
    kubeconfig: Path,
    nats_url: str,
    namespace: str | None,
    log_dir: Path,
    config: Mapping[str, str] | None = None,
    **settings: str,
) -> AsyncIterator[OperatorProcess]:
    """`switchboard operator` as a real process, stopped (SIGTERM) at the end.

    `namespace` None runs it cluster-wide. `config` is SB_OPERATOR_* environment as a
    deployment would give it (e.g. the chart's ConfigMap); the free ports, short test
    intervals and `settings` override it."""
    health, metrics = free_port(), free_port()
    env = (
        os.environ
        | dict(config or {})
        | {
            "KUBECONFIG": str(kubeconfig),
            "SB_OPERATOR_NATS_URL": nats_url,
            "SB_OPERATOR_HEALTH_PORT": str(health),
            "SB_OPERATOR_METRICS_PORT": str(metrics),
            "SB_OPERATOR_SCALE_INTERVAL_S": "0.5",
            "SB_OPERATOR_STATUS_INTERVAL_S": "1",
            "SB_OPERATOR_DELETION_COST_MIN_INTERVAL_S": "1",
        }
    )
    if config is None:
        env["SB_OPERATOR_STANDALONE"] = "true"
    env |= {f"SB_OPERATOR_{k.upper()}": v for k, v in settings.items()}
    if namespace is not None:
        env["SB_OPERATOR_NAMESPACE"] = namespace
    log_path = log_dir / f"operator-{health}.log"
    process = LocalProcess(switchboard_command("operator"), env, str(log_path)).spawn()
    try:
        await asyncio.to_thread(wait_for_port, metrics, 30)
        await asyncio.to_thread(wait_for_port, health, 30)
        yield OperatorProcess(process, metrics, log_path)
    finally:
        await asyncio.to_thread(process.stop, 20)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Poll an async check until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(0.1)
    return result


def ready(obj: Any) -> dict[str, Any] | None:
    """The object's Ready condition, if it has one."""
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), None)


async def kv_get(js: Any, key: str) -> bytes | None:
    """A channel's entry in `sb_channels`, or None."""
    try:
        entry = await (await js.key_value("sb_channels")).get(key)
    except Exception:  # no bucket, KeyNotFoundError, KeyDeletedError: all "not there"
        return None
    value: bytes | None = entry.value
    return value or None
