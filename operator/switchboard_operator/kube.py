"""The operator's own Kubernetes API calls: the only operator module that makes any.

kopf watches and patches the operator's resources itself; this module adds the
few calls kopf has no verb for (read a Deployment, set its scale, list and
annotate its pods; list and delete the release's own resources for the chart's
pre-delete hook), through the official `kubernetes` client. Its configuration
loading (a pod's ServiceAccount, else a kubeconfig, with exec credential plugins
such as EKS', GKE's and AKS') is also what kopf logs in with (`connection_info`),
so both always present the same identity. The client is synchronous: every call
runs in a worker thread, never on the event loop. Every call here appears in
`switchboard_operator.rbac.REQUIRED`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kopf
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from switchboard.contract.errors import SwitchboardException
from switchboard_operator.models import GROUP, VERSION

MERGE_PATCH = "application/merge-patch+json"
DEFAULT_KUBECONFIG = "~/.kube/config"
TIMEOUT_S = 10.0

T = TypeVar("T")


class KubeError(SwitchboardException):
    """An API call failed; the message says which and how."""

    def __init__(self, what: str, status: int, body: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")
        self.status = status


class NoCredentials(SwitchboardException):
    """Neither a ServiceAccount nor a usable kubeconfig: the message says why."""


def label_selector(labels: Mapping[str, str]) -> str:
    """`{k: v, ...}` as a Kubernetes equality label selector."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def load_configuration() -> k8s.Configuration:
    """In a pod its ServiceAccount (the token file is re-read as it rotates), else the
    kubeconfig (`$KUBECONFIG`, `~/.kube/config`) with whatever it authenticates by:
    client certificates, tokens, exec plugins (re-run when their credential expires).
    Blocking (files, an exec plugin's process): call it in a thread."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return configuration
    except ConfigException as in_cluster:
        try:
            # read now: the client's own default is `$KUBECONFIG` as it was at import
            files = os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
            k8s_config.load_kube_config(files, client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (ConfigException, OSError) as kubeconfig:
            raise NoCredentials(
                f"no Kubernetes credentials: not in a pod ({in_cluster}), and no usable "
                f"kubeconfig ({kubeconfig})"
            ) from None
    return configuration


def connection_info(
    configuration: k8s.Configuration, settings: kopf.OperatorSettings
) -> kopf.ConnectionInfo:
    """kopf's credentials from the client's configuration (as kopf's own
    `login_via_client` reads them); asking for the token runs the client's refresh
    hook, so an expired exec-plugin or ServiceAccount token is renewed first."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    scheme, token = None, None
    if header:
        first, _, rest = header.partition(" ")
        scheme, token = (first, rest) if rest else (None, first)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        trust_env=settings.networking.trust_env,
    )


def preload() -> None:
    """Load the client's API modules now: the first use of each generates its typed
    methods' validators, seconds of CPU (with the GIL held) that must not land in
    the first reconcile. The operator calls this before its event loop starts."""
    for api in (k8s.AppsV1Api, k8s.CoreV1Api, k8s.CustomObjectsApi):
        assert api.__name__


class KubeApi:
    """Async calls over the official client (each in a worker thread)."""

    def __init__(self) -> None:
        self._client: k8s.ApiClient | None = None

    async def use(self, configuration: k8s.Configuration) -> None:
        """New credentials (kopf logs in again when a token expires)."""
        await self.close()
        self._client = k8s.ApiClient(configuration)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    @property
    def client(self) -> k8s.ApiClient:
        if self._client is None:
            raise KubeError("no credentials", 0, "kopf has not logged in yet")
        return self._client

    async def _call(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(call, *args, _request_timeout=TIMEOUT_S, **kwargs)
        except ApiException as exc:
            raise KubeError(what, int(exc.status or 0), str(exc.body or exc.reason)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(what, 0, repr(exc)) from None

    async def _json(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A read as the API's own JSON: what the handlers read, and no model
        validation between (an object a model would refuse is still read)."""
        response = await self._call(what, call, *args, _preload_content=False, **kwargs)
        try:
            return json.loads(response.data)
        except ValueError as exc:
            raise KubeError(what, 0, f"not JSON: {exc}") from None

    async def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        api = k8s.AppsV1Api(self.client)
        found: dict[str, Any] = await self._json(
            f"get deployment {name}", api.read_namespaced_deployment, name, namespace
        )
        return found

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        api = k8s.AppsV1Api(self.client)
        await self._call(
            f"scale deployment {name}",
            api.patch_namespaced_deployment_scale,
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            _content_type=MERGE_PATCH,
        )

    async def pods(self, namespace: str, match_labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Pods carrying all `match_labels` (filtered here too, whatever the server does)."""
        api = k8s.CoreV1Api(self.client)
        listing = await self._json(
            "list pods",
            api.list_namespaced_pod,
            namespace,
            label_selector=label_selector(match_labels),
        )
        items: list[dict[str, Any]] = listing.get("items") or []
        return [
            pod
            for pod in items
            if all(
                (pod.get("metadata", {}).get("labels") or {}).get(k) == v
                for k, v in match_labels.items()
            )
        ]

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        api = k8s.CoreV1Api(self.client)
        await self._call(
            f"annotate pod {name}",
            api.patch_namespaced_pod,
            name,
            namespace,
            {"metadata": {"annotations": dict(annotations)}},
            _content_type=MERGE_PATCH,
        )

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete one pod, only if it is still the pod seen (`uid`: not a namesake that
        replaced it); already gone is fine. Its grace period is its own."""
        api = k8s.CoreV1Api(self.client)
        try:
            await self._call(
                f"delete pod {name}",
                api.delete_namespaced_pod,
                name,
                namespace,
                body=k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid)),
            )
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise

    async def names(self, namespace: str, plural: str, labels: Mapping[str, str]) -> list[str]:
        """Names of this namespace's switchboard.dev objects of a kind carrying `labels`."""
        api = k8s.CustomObjectsApi(self.client)
        listing = await self._call(
            f"list {plural}",
            api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            label_selector=label_selector(labels),
        )
        items: list[dict[str, Any]] = dict(listing).get("items") or []  # type: ignore[call-overload]
        return [item["metadata"]["name"] for item in items]

    async def delete(self, namespace: str, plural: str, name: str) -> None:
        """Delete one switchboard.dev object (already gone is fine)."""
        api = k8s.CustomObjectsApi(self.client)
        try:
            await self._call(
                f"delete {plural[:-1]} {name}",
                api.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
