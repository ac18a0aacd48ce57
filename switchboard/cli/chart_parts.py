"""Building blocks of the Helm chart's `values.schema.json` (switchboard/cli/chart_schema.py,
which imports them by these names): JSON Schema nodes for the parts of the chart
that no settings model describes (objects, strings, maps, images, placement,
ServiceAccounts), and whole sections of the values built from them.
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]


def _obj(description: str, properties: JSON, **extra: Any) -> JSON:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": False,
        **extra,
    }


def _str(description: str, **extra: Any) -> JSON:
    return {"type": "string", "description": description, **extra}


def _int(description: str, minimum: int | None = None, **extra: Any) -> JSON:
    out: JSON = {"type": "integer", "description": description, **extra}
    if minimum is not None:
        out["minimum"] = minimum
    return out


def _bool(description: str) -> JSON:
    return {"type": "boolean", "description": description}


def _map(description: str) -> JSON:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string"},
    }


def _list(description: str) -> JSON:
    return {"type": "array", "description": description, "items": {"type": "object"}}


def _free(description: str) -> JSON:
    """A Kubernetes object passed through as is (checked by the API server)."""
    return {"type": "object", "description": description}


def _resources(description: str) -> JSON:
    quantities = {
        "type": "object",
        "additionalProperties": {"type": ["string", "number"]},
    }
    return _obj(description, {"requests": quantities, "limits": quantities})


def _image(description: str) -> JSON:
    return _obj(
        description,
        {
            "repository": _str("Image repository.", minLength=1),
            "tag": _str("Image tag (empty: the chart's appVersion)."),
            "digest": _str(
                "Pins the image (sha256:...); wins over the tag.",
                pattern=r"^(sha256:[a-f0-9]{64})?$",
            ),
            "pullPolicy": {
                "enum": ["Always", "IfNotPresent", "Never"],
                "description": "Pull policy.",
            },
        },
        required=["repository"],
    )


def _pod_placement() -> JSON:
    return {
        "podAnnotations": _map("Extra pod annotations."),
        "podLabels": _map("Extra pod labels."),
        "nodeSelector": _map("Node selector."),
        "tolerations": _list("Tolerations."),
        "affinity": _free("Affinity (replaces the chart's anti-affinity when set)."),
        "priorityClassName": _str("Priority class."),
    }


def _service_account(what: str) -> JSON:
    return _obj(
        f"The {what} ServiceAccount.",
        {
            "create": _bool("Create it (else `name` must exist)."),
            "name": _str("Name (empty: generated)."),
            "annotations": _map("Annotations (e.g. cloud IAM bindings)."),
        },
    )


def _auth() -> JSON:
    """The `auth` values."""
    return _obj(
        "Key material, kept in a Secret.",
        {
            "existingSecret": _str(
                "Use this Secret (keys `jwt-secret` or `jwt-public-key.pem`, "
                "and `resume-secret`) instead of creating one."
            ),
            "verification": {
                "enum": ["secret", "publicKey"],
                "description": "How edges verify JWTs: an HS256 shared secret, or "
                "an RS256/ES256 public key (PEM).",
            },
            "jwtSecret": _str(
                "HS256 secret, at least 32 characters (empty: generated at install, "
                "kept on upgrade).",
                pattern=r"^(.{32,})?$",
            ),
            "jwtPublicKey": _str("PEM public key (verification: publicKey)."),
            "resumeSecret": _str(
                "Signs resume tokens, at least 32 characters (empty: generated at "
                "install, kept on upgrade).",
                pattern=r"^(.{32,})?$",
            ),
        },
    )


def _otel() -> JSON:
    """The `otel` values."""
    return _obj(
        "OpenTelemetry traces, passed to edges, operator and the cleanup hook as the "
        "standard OTEL_* variables.",
        {
            "enabled": _bool("Export traces."),
            "endpoint": _str("OTLP endpoint, e.g. http://otel-collector:4318 (gRPC: :4317)."),
            "protocol": {
                "enum": ["http/protobuf", "grpc"],
                "description": "OTEL_EXPORTER_OTLP_PROTOCOL.",
            },
            "sampler": {
                "enum": [
                    "always_on",
                    "always_off",
                    "traceidratio",
                    "parentbased_always_on",
                    "parentbased_always_off",
                    "parentbased_traceidratio",
                ],
                "description": "OTEL_TRACES_SAMPLER.",
            },
            "samplerArg": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "OTEL_TRACES_SAMPLER_ARG (the ratio).",
            },
            "resourceAttributes": _map("Added to OTEL_RESOURCE_ATTRIBUTES."),
        },
    )


def _service() -> JSON:
    """The `service` values."""
    return _obj(
        "The Service clients connect through.",
        {
            "type": {
                "enum": ["ClusterIP", "NodePort", "LoadBalancer"],
                "description": "Service type.",
            },
            "port": _int("Service port.", 1, maximum=65535),
            "nodePort": _int("Node port (type NodePort or LoadBalancer; 0: any).", 0),
            "externalTrafficPolicy": {
                "enum": ["", "Cluster", "Local"],
                "description": "For NodePort/LoadBalancer (Local keeps client IPs).",
            },
            "annotations": _map("Service annotations (e.g. load balancer options)."),
        },
    )


def _network_peer() -> JSON:
    """A NetworkPolicy peer (`networking.k8s.io/v1` NetworkPolicyPeer)."""
    return {
        "type": "object",
        "description": "A NetworkPolicy peer: pods, namespaces or an IP block.",
        "properties": {
            "podSelector": _free("Pods (alone: in the release's namespace)."),
            "namespaceSelector": _free("Namespaces ({}: all)."),
            "ipBlock": {
                "type": "object",
                "properties": {
                    "cidr": _str("A CIDR, e.g. 10.0.0.0/8.", minLength=1),
                    "except": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["cidr"],
                "additionalProperties": False,
            },
        },
        "minProperties": 1,
        "additionalProperties": False,
    }


def _network_policy() -> JSON:
    """The `networkPolicy` values."""
    return _obj(
        "NetworkPolicies for NATS, the operator and the edges (docs/security.md).",
        {
            "enabled": _bool("Create them (needs a CNI that enforces them)."),
            "backends": _obj(
                "Pods that may reach NATS as backends.",
                {
                    "namespaceSelector": _free("Namespaces ({}: all)."),
                    "podSelector": _free("Pods in those namespaces."),
                },
            ),
            "monitoringNamespaces": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "Namespaces whose pods may scrape NATS, the operator and "
                "the edges' admin port.",
            },
            "admin": _obj(
                "The edges' admin port (server API, /metrics).",
                {
                    "from": {
                        "type": "array",
                        "description": "Peers that may reach it, besides "
                        "monitoringNamespaces (default: the release's namespace; "
                        "[]: none).",
                        "items": _network_peer(),
                    },
                },
            ),
        },
    )
