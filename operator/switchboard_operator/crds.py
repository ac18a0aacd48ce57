"""Generates the CustomResourceDefinitions from the typed models.

`switchboard crds --out charts/switchboard/crds` writes them; a test fails when
the committed YAML drifts from the models. The API server then enforces what
the operator's models would: defaults, bounds, patterns, and rules across
fields (CEL) such as minReplicas ≤ maxReplicas.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from switchboard_operator.models import (
    GROUP,
    VERSION,
    ChannelSpec,
    ChannelStatus,
    EdgePoolSpec,
    EdgePoolStatus,
)

_DROP = {"title", "additionalProperties", "$defs"}


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A Kubernetes structural schema (OpenAPI v3.0 subset) of a pydantic model."""
    raw = model.model_json_schema(by_alias=True)
    return _convert(raw, raw.get("$defs", {}))


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = _convert(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        extra = {k: v for k, v in node.items() if k != "$ref" and k not in _DROP}
        return {**target, **extra}
    if "anyOf" in node:  # `X | None`: optional in Kubernetes means "may be absent"
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
        merged = {**_convert(options[0], defs)}
        merged.update({k: v for k, v in node.items() if k not in _DROP | {"anyOf", "default"}})
        if node.get("default") is not None:
            merged["default"] = node["default"]
        return merged
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "exclusiveMinimum":  # JSON Schema number → OpenAPI 3.0 boolean form
            out["minimum"], out["exclusiveMinimum"] = value, True
        else:
            out[key] = value
    for name, sub in out.get("properties", {}).items():
        # A nested object that is not optional (`X | None`) and needs nothing defaults
        # to {}, so that its own fields' defaults apply.
        optional = "anyOf" in node["properties"][name]
        needs_nothing = "default" not in sub and not sub.get("required")
        if sub.get("type") == "object" and not optional and needs_nothing:
            sub["default"] = {}
    return out


def _crd(
    kind: str,
    plural: str,
    short: list[str],
    spec: dict[str, Any],
    status: dict[str, Any],
    columns: list[dict[str, Any]],
    root_rules: list[dict[str, str]],
    spec_required: bool,
) -> dict[str, Any]:
    root: dict[str, Any] = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if spec_required:
        root["required"] = ["spec"]
    if root_rules:
        root["x-kubernetes-validations"] = root_rules
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "annotations": {"switchboard.dev/generated-by": "switchboard crds"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["switchboard"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def _ready_column() -> dict[str, Any]:
    return {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    }


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def channel_crd() -> dict[str, Any]:
    spec = openapi_schema(ChannelSpec)
    spec["default"] = {}
    spec["description"] = "How the channel with this name, and every channel below it, behaves."
    return _crd(
        "Channel",
        "channels",
        ["sbch"],
        spec,
        openapi_schema(ChannelStatus),
        [
            {"name": "History", "type": "integer", "jsonPath": ".spec.history.size"},
            {"name": "Presence", "type": "boolean", "jsonPath": ".spec.presence"},
            {"name": "Subscribers", "type": "integer", "jsonPath": ".status.subscribers"},
            {"name": "Msg/s", "type": "number", "jsonPath": ".status.messagesPerSecond"},
            _ready_column(),
            _AGE,
        ],
        [
            {
                # Kubernetes names allow dots; channel names use `:` as separator and no dots.
                "rule": "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
                "message": "a Channel's name is its channel name: lowercase letters, digits, '-'",
            }
        ],
        spec_required=False,
    )


def edgepool_crd() -> dict[str, Any]:
    spec = openapi_schema(EdgePoolSpec)
    spec["description"] = "How one edge Deployment is scaled and drained."
    spec["x-kubernetes-validations"] = [
        {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas > maxReplicas"}
    ]
    return _crd(
        "EdgePool",
        "edgepools",
        ["sbep"],
        spec,
        openapi_schema(EdgePoolStatus),
        [
            {"name": "Deployment", "type": "string", "jsonPath": ".spec.deployment"},
            {"name": "Connections", "type": "integer", "jsonPath": ".status.connections"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
            {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
            {"name": "Draining", "type": "integer", "jsonPath": ".status.draining"},
            _AGE,
        ],
        [],
        spec_required=True,
    )


def crd_files() -> dict[str, str]:
    """File name → YAML, as committed under the chart's `crds/`."""
    header = "# Generated by `switchboard crds` from switchboard_operator.models; do not edit.\n"
    return {
        f"{crd['spec']['names']['plural']}.yaml": header
        + yaml.safe_dump(crd, sort_keys=False, width=100)
        for crd in (channel_crd(), edgepool_crd())
    }
