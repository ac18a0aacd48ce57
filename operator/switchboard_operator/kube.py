"""The operator's own Kubernetes API calls: the only operator module that makes any.

kopf watches and patches the operator's resources itself; this module adds the
few calls kopf has no verb for (read a Deployment, set its scale, list and
annotate its pods; list and delete the release's own resources for the chart's
pre-delete hook), with the credentials kopf logs in with. Every call here appears
in `switchboard_operator.rbac.REQUIRED`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

from switchboard.contract.errors import SwitchboardException
from switchboard_operator.models import GROUP, VERSION

MERGE_PATCH = "application/merge-patch+json"


class KubeError(SwitchboardException):
    """An API call failed; the message says which and how."""

    def __init__(self, what: str, status: int, body: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")
        self.status = status


def label_selector(labels: Mapping[str, str]) -> str:
    """`{k: v, ...}` as a Kubernetes equality label selector."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """In a pod its ServiceAccount, else the kubeconfig (`KUBECONFIG`)."""
    return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    """kopf's own TLS setup (CA and client certificate, from files or inline data),
    so these calls trust and present exactly what kopf's do."""
    if info.server.startswith("http://"):
        return False
    return info.as_ssl_context()


class KubeApi:
    """A small async client over the credentials kopf uses."""

    def __init__(self) -> None:
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None

    async def use(self, info: kopf.ConnectionInfo) -> None:
        """New credentials (kopf logs in again when a token expires)."""
        self._info = info
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> tuple[aiohttp.ClientSession, str]:
        if self._info is None:
            raise KubeError("no credentials", 0, "kopf has not logged in yet")
        if self._session is None or self._session.closed:
            headers = self._info.as_http_headers()
            connector = aiohttp.TCPConnector(ssl=_ssl_context(self._info))
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            )
        return self._session, self._info.server.rstrip("/")

    async def _call(
        self, method: str, path: str, what: str, *, json: Any = None, params: Any = None
    ) -> Any:
        session, server = self._open()
        headers = {"Content-Type": MERGE_PATCH} if method == "PATCH" else {}
        async with session.request(
            method, server + path, json=json, params=params, headers=headers
        ) as response:
            if response.status >= 400:
                raise KubeError(what, response.status, await response.text())
            return await response.json(content_type=None)

    async def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        path = f"/apis/apps/v1/namespaces/{quote(namespace)}/deployments/{quote(name)}"
        result: dict[str, Any] = await self._call("GET", path, f"get deployment {name}")
        return result

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        path = f"/apis/apps/v1/namespaces/{quote(namespace)}/deployments/{quote(name)}/scale"
        body = {"spec": {"replicas": replicas}}
        await self._call("PATCH", path, f"scale deployment {name}", json=body)

    async def pods(self, namespace: str, match_labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Pods carrying all `match_labels` (filtered here too, whatever the server does)."""
        selector = label_selector(match_labels)
        path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        result = await self._call("GET", path, "list pods", params={"labelSelector": selector})
        items: list[dict[str, Any]] = result.get("items") or []
        return [
            pod
            for pod in items
            if all(
                (pod.get("metadata", {}).get("labels") or {}).get(k) == v
                for k, v in match_labels.items()
            )
        ]

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
        body = {"metadata": {"annotations": dict(annotations)}}
        await self._call("PATCH", path, f"annotate pod {name}", json=body)

    async def names(self, namespace: str, plural: str, labels: Mapping[str, str]) -> list[str]:
        """Names of this namespace's switchboard.dev objects of a kind carrying `labels`."""
        selector = label_selector(labels)
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{quote(plural)}"
        result = await self._call("GET", path, f"list {plural}", params={"labelSelector": selector})
        return [item["metadata"]["name"] for item in result.get("items") or []]

    async def delete(self, namespace: str, plural: str, name: str) -> None:
        """Delete one switchboard.dev object (already gone is fine)."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{plural}/{quote(name)}"
        try:
            await self._call("DELETE", path, f"delete {plural[:-1]} {name}")
        except KubeError as exc:
            if exc.status != 404:
                raise
