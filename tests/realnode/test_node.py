"""The real single-node cluster (tests/realnode/node.py) does what the chart will need.

Real: the control plane, kube-scheduler, kubelet on containerd with runc, the bridge CNI,
kube-proxy, CoreDNS and the PersistentVolume binder; pods run the image built from the
Dockerfile. The ``node`` fixture's teardown then checks that every host change the node
made is gone (bridge, iptables rules, cgroups, host paths, ip_forward).
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.realnode.images import Images
from tests.realnode.node import NODE_NAME, Node

NS = "default"

# The node starts in the first test's setup: 10-35 s, over a minute on a loaded machine.
pytestmark = pytest.mark.timeout(300)


def wait_for(node: Node, check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the kubelet's log."""
    deadline = time.monotonic() + timeout_s
    while True:
        node.check_alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s}s\n{node.log_tail('kubelet')}")
        time.sleep(0.2)


def pod(name: str, image: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A pod as the chart's are: read-only root, non-root, no privilege escalation."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    **spec.pop("container", {}),
                }
            ],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
            **spec,
        },
    }


def phase(node: Node, name: str) -> str:
    status = node.api.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}").get("status", {})
    return str(status.get("phase", ""))


def finished(node: Node, name: str, timeout_s: float = 60) -> None:
    """Wait for the pod to end; it must have Succeeded (its log is in the failure)."""
    wait_for(node, lambda: phase(node, name) in ("Succeeded", "Failed"), timeout_s, name)
    if phase(node, name) != "Succeeded":
        status = node.api.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")["status"]
        logs = "\n".join(str(p.read_text()) for p in node.path("pod-logs").rglob("*.log"))
        pytest.fail(f"{name} failed: {status}\n{logs[-3000:]}")


def test_node_is_ready(node: Node) -> None:
    assert node.node_ready()
    info = node.api.request("GET", f"/api/v1/nodes/{NODE_NAME}")["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://1.6")
    print(f"node up and Ready in {node.timings['start']:.1f}s")


def test_pod_resolves_services_and_reaches_the_api_server(node: Node, images: Images) -> None:
    """Cluster DNS (CoreDNS) and the ``kubernetes`` Service (kube-proxy) from a pod,
    as the operator's in-cluster client uses them."""
    script = (
        "import socket, ssl, urllib.request\n"
        "ip = socket.gethostbyname('kubernetes.default.svc.cluster.local')\n"
        "ca = '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt'\n"
        "ctx = ssl.create_default_context(cafile=ca)\n"
        "body = urllib.request.urlopen('https://kubernetes.default.svc/readyz', context=ctx)\n"
        "print(ip, body.read().decode())\n"
    )
    node.api.request(
        "POST",
        f"/api/v1/namespaces/{NS}/pods",
        pod("dns-and-api", images.switchboard, ["python", "-c", script], restartPolicy="Never"),
    )
    finished(node, "dns-and-api", timeout_s=90)


def test_service_reaches_a_pod_from_the_host(node: Node, images: Images) -> None:
    """A ClusterIP Service, from outside the pod network, through kube-proxy's rules."""
    web = pod(
        "web",
        images.switchboard,
        ["python", "-m", "http.server", "8000", "--directory", "/opt/venv"],
        container={
            "ports": [{"containerPort": 8000}],
            "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
        },
    )
    node.api.request("POST", f"/api/v1/namespaces/{NS}/pods", web)
    service = node.api.request(
        "POST",
        f"/api/v1/namespaces/{NS}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]},
        },
    )
    cluster_ip = service["spec"]["clusterIP"]

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://{cluster_ip}/", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    wait_for(node, answers, 60, f"answer from the Service at {cluster_ip}")


def test_claim_binds_to_a_local_volume_owned_by_fs_group(node: Node, images: Images) -> None:
    """The PV binder binds a claim to a pre-created local volume; fsGroup makes it
    writable for a non-root pod (as the NATS StatefulSet's data volume)."""
    node.api.request(
        "POST",
        f"/api/v1/namespaces/{NS}/persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )

    def bound() -> bool:
        claim = node.api.request("GET", f"/api/v1/namespaces/{NS}/persistentvolumeclaims/data")
        return bool(claim.get("status", {}).get("phase") == "Bound")

    wait_for(node, bound, 30, "bound claim")
    writer = pod(
        "writer",
        images.switchboard,
        ["python", "-c", "open('/data/x', 'w').write('ok'); print(open('/data/x').read())"],
        restartPolicy="Never",
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    )
    writer["spec"]["securityContext"].update(runAsUser=1000, runAsGroup=1000, fsGroup=1000)
    node.api.request("POST", f"/api/v1/namespaces/{NS}/pods", writer)
    finished(node, "writer", timeout_s=60)
