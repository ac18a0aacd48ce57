"""The operator's Kubernetes module against the real API server: the credential forms
users' kubeconfigs carry (kind, minikube and k3d write client certificates inline;
EKS, GKE and AKS an exec plugin; in a pod the operator has a ServiceAccount token),
kopf's login from the same configuration, and `switchboard cleanup`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import kopf
import pytest
import yaml

from switchboard_operator.cleanup import cleanup
from switchboard_operator.kube import (
    KubeApi,
    KubeError,
    NoCredentials,
    connection_info,
    load_configuration,
)
from switchboard_operator.models import GROUP, VERSION
from tests.controlplane.cluster import ControlPlane
from tests.e2e.kubeconfig import api_client, exec_plugin_kubeconfig
from tests.operator.harness import ApiClient, channel_path, edgepool_path, eventually

CRDS = Path(__file__).resolve().parents[2] / "charts" / "switchboard" / "crds"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


async def _login(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> KubeApi:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    api = KubeApi()
    await api.use(await asyncio.to_thread(load_configuration))
    return api


async def test_inline_client_certificate(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = control_plane.admin_kubeconfig()
    user = json.loads(kubeconfig.read_text())["users"][0]["user"]
    assert {"client-certificate-data", "client-key-data"} <= set(user)
    api = await _login(kubeconfig, monkeypatch)
    try:
        assert await api.pods("default", {"app": "none-such"}) == []
        with pytest.raises(KubeError) as missing:
            await api.deployment("default", "none-such")
        assert missing.value.status == 404
    finally:
        await api.close()


async def test_service_account_token_is_refused_outside_its_role(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `default` ServiceAccount has no Role: the server answers 403, named."""
    kubeconfig = control_plane.kubeconfig_for_service_account("default", "default")
    api = await _login(kubeconfig, monkeypatch)
    try:
        with pytest.raises(KubeError, match="list pods: HTTP 403") as refused:
            await api.pods("default", {"app": "x"})
        assert refused.value.status == 403
    finally:
        await api.close()


async def test_exec_plugin_credentials_for_our_calls_and_for_kopf(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A kubeconfig whose user is an exec plugin (EKS, GKE, AKS): the plugin runs, its
    token is the identity of our calls (the `default` ServiceAccount, refused by name)
    and of kopf's login."""
    token_kubeconfig = control_plane.kubeconfig_for_service_account("default", "default")
    kubeconfig, runs = exec_plugin_kubeconfig(token_kubeconfig, tmp_path)
    api = await _login(kubeconfig, monkeypatch)
    try:
        assert runs.read_text() == "ran\n"
        with pytest.raises(KubeError, match="system:serviceaccount:default:default") as refused:
            await api.pods("default", {"app": "x"})
        assert refused.value.status == 403
    finally:
        await api.close()
    configuration = await asyncio.to_thread(load_configuration)
    info = connection_info(configuration, kopf.OperatorSettings())
    token = json.loads(token_kubeconfig.read_text())["users"][0]["user"]["token"]
    assert (info.scheme, info.token) == ("Bearer", token)
    assert info.server == control_plane.server and info.ca_path


async def test_no_credentials_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(NoCredentials, match=r"not in a pod .* no usable kubeconfig"):
        load_configuration()


async def test_cleanup_deletes_only_the_labelled_and_says_what_stays(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`switchboard cleanup` without an operator to release a finalizer: it gives up
    after its timeout, exits 1 and names what stayed; unlabelled objects are left."""
    namespace, labels = "cleanup-test", {"app.kubernetes.io/instance": "rel"}
    async with api_client(control_plane.admin_kubeconfig()) as admin:
        await _ensure_crds(admin)
        await admin.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
        held = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "EdgePool",
            "metadata": {"name": "held", "labels": labels, "finalizers": ["example.com/held"]},
            "spec": {"deployment": "edge"},
        }
        other = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Channel",
            "metadata": {"name": "theirs"},
            "spec": {},
        }
        await admin.create(edgepool_path(namespace), held)
        await admin.create(channel_path(namespace), other)
        monkeypatch.setenv("KUBECONFIG", str(control_plane.admin_kubeconfig()))

        assert await cleanup(namespace, labels, timeout_s=1) == 1
        assert "still there" in caplog.text and "held" in caplog.text
        assert (await admin.get(edgepool_path(namespace, "held")))["metadata"]["deletionTimestamp"]
        assert (
            "deletionTimestamp"
            not in (await admin.get(channel_path(namespace, "theirs")))["metadata"]
        )

        await admin.patch(edgepool_path(namespace, "held"), {"metadata": {"finalizers": []}})
        assert await cleanup(namespace, labels, timeout_s=10) == 0
        assert await admin.get(edgepool_path(namespace, "held")) is None


async def _ensure_crds(admin: ApiClient) -> None:
    """The chart's CRDs, as `helm install` would create them (if not there yet)."""
    crds = [d for p in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    for crd in crds:
        status, body = await admin.call("POST", CRD_PATH, crd)
        assert status in (201, 409), body
        name = crd["metadata"]["name"]

        async def established(name: str = name) -> bool:
            obj = await admin.get(f"{CRD_PATH}/{name}")
            conditions = (obj.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        await eventually(established)
