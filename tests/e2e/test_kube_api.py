"""The operator's Kubernetes module with the credential forms users' kubeconfigs carry.

kind, minikube and k3d write client certificates inline (`client-certificate-data`);
in a pod the operator has a ServiceAccount token. Both against the real API server.
"""

from __future__ import annotations

import json
from pathlib import Path

import kopf
import pytest

from switchboard_operator.kube import KubeApi, KubeError
from tests.controlplane.cluster import ControlPlane


async def _login(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> KubeApi:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    api = KubeApi()
    await api.use(info)
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
