"""Every Kubernetes API permission the operator needs, and why.

`switchboard_operator.kube` (the one module that calls the API, for the operator
and for the chart's pre-delete hook) and kopf itself make exactly these calls; the
chart's Role is tested against this list, and the control-plane tests run the
operator and the hook under that Role to prove it is enough.
"""

from __future__ import annotations

from typing import NamedTuple


class Permission(NamedTuple):
    api_group: str
    resource: str
    verbs: tuple[str, ...]
    why: str


REQUIRED: tuple[Permission, ...] = (
    Permission(
        "switchboard.dev",
        "channels",
        ("get", "list", "watch", "patch", "update", "delete"),
        "kopf watches Channels and patches their finalizer and progress annotations; "
        "the pre-delete hook deletes the release's own",
    ),
    Permission(
        "switchboard.dev",
        "channels/status",
        ("get", "patch", "update"),
        "status: subscribers, messages per second, last offset, epoch, Ready",
    ),
    Permission(
        "switchboard.dev",
        "edgepools",
        ("get", "list", "watch", "patch", "update", "delete"),
        "kopf watches EdgePools and patches their finalizer and progress annotations; "
        "the pre-delete hook deletes the release's own",
    ),
    Permission(
        "switchboard.dev",
        "edgepools/status",
        ("get", "patch", "update"),
        "status: connections, replicas, desired, draining, last scale time",
    ),
    Permission(
        "apps",
        "deployments",
        ("get",),
        "read the edge Deployment's replicas and pod selector",
    ),
    Permission(
        "apps",
        "deployments/scale",
        ("get", "patch", "update"),
        "set the edge Deployment's replicas (scaling on connections)",
    ),
    Permission(
        "",
        "pods",
        ("get", "list", "patch", "delete"),
        "find the edge pods, keep pod-deletion-cost equal to their connections, "
        "and delete one cut off from NATS",
    ),
    Permission(
        "",
        "events",
        ("create", "patch"),
        "Kubernetes events for what the operator did (kopf posts them)",
    ),
    Permission(
        "events.k8s.io",
        "events",
        ("create", "patch"),
        "the same events through the newer events API",
    ),
    Permission(
        "kopf.dev",
        "kopfpeerings",
        ("get", "list", "watch", "patch"),
        "kopf peering: replicas elect one active operator through a KopfPeering object",
    ),
)
