"""Smoke test of the real control plane: real controllers make Pods, real RBAC refuses.

Uses the official `kubernetes` client through the kubeconfig files the harness writes,
so it also proves those files work with a standard client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.controlplane.cluster import ControlPlane

T = TypeVar("T")


def _api(kubeconfig: Path) -> client.ApiClient:
    """A client configured only from the kubeconfig file, as a user's tool would be."""
    # The kubeconfig loader is the one untyped corner of the (py.typed) client.
    loaded = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    api: client.ApiClient = loaded
    return api


def _eventually(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll until ``check`` returns something other than None (controllers are async)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    """A fresh namespace per test, created with the admin kubeconfig."""
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(_api(control_plane.admin_kubeconfig()))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def test_deployment_controllers_create_pods(control_plane: ControlPlane, namespace: str) -> None:
    api = _api(control_plane.admin_kubeconfig())
    labels = {"app": "smoke"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="smoke"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    # Never pulled: there is no kubelet, Pods stay Pending.
                    containers=[client.V1Container(name="app", image="example.invalid/app:1")]
                ),
            ),
        ),
    )
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment)

    core = client.CoreV1Api(api)

    def two_pods() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=smoke").items
        return pods if len(pods) == 2 else None

    pods = _eventually(two_pods, 60, "the ReplicaSet controller to create 2 Pods")
    for pod in pods:
        owners = pod.metadata.owner_references if pod.metadata else None
        assert owners, "Pods are owned by the ReplicaSet the Deployment controller made"
        assert [o.kind for o in owners] == ["ReplicaSet"]
        assert pod.status is not None
        assert pod.status.phase == "Pending"


def test_service_account_rbac(control_plane: ControlPlane, namespace: str) -> None:
    admin = _api(control_plane.admin_kubeconfig())
    core = client.CoreV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    meta = client.V1ObjectMeta(name="pod-reader")
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=meta))
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=meta,
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=meta,
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="pod-reader", namespace=namespace)
            ],
        ),
    )

    reader = client.CoreV1Api(
        _api(control_plane.kubeconfig_for_service_account(namespace, "pod-reader"))
    )

    def can_list_pods() -> bool | None:
        # The RBAC authorizer reads roles through an informer: allow it a moment.
        try:
            reader.list_namespaced_pod(namespace)
        except ApiException as e:
            if e.status == 403:
                return None
            raise
        return True

    assert _eventually(can_list_pods, 10, "the pod-reader binding to take effect")

    with pytest.raises(ApiException) as refused:
        reader.list_namespaced_secret(namespace)
    assert refused.value.status == 403
