"""Schema pieces of the chart's escape hatches and production extras: probe
overrides, Deployment/StatefulSet strategies, extra volumes and containers,
pod/container securityContext, monitors and PodDisruptionBudgets."""

from __future__ import annotations

from switchboard.cli.chart_parts import JSON, _free, _int, _list, _map, _obj, _str

_INT_OR_PERCENT = {"type": ["integer", "string"], "pattern": r"^[0-9]+%$", "minimum": 0}

# Probe fields the chart types; the handler (httpGet, tcpSocket, exec, grpc) is the
# chart's unless one is given.
_PROBE_TIMINGS = (
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
    "terminationGracePeriodSeconds",
)


def _probe(description: str) -> JSON:
    properties: JSON = {name: _int(f"{name}.", 0) for name in _PROBE_TIMINGS}
    for handler in ("httpGet", "tcpSocket", "exec", "grpc"):
        properties[handler] = _free(f"{handler} (replaces the chart's handler).")
    return {
        "type": ["object", "null"],
        "description": f"{description} null: no probe.",
        "properties": properties,
        "additionalProperties": False,
    }


def _strategy(description: str, types: tuple[str, ...], rolling: JSON) -> JSON:
    return _obj(
        description,
        {
            "type": {"enum": list(types), "description": "Strategy type."},
            "rollingUpdate": {
                "type": ["object", "null"],
                "description": "RollingUpdate parameters (dropped for other types).",
                "properties": rolling,
                "additionalProperties": False,
            },
        },
    )


def _deployment_strategy(description: str) -> JSON:
    surge = {**_INT_OR_PERCENT, "description": "maxSurge: pods above the desired count."}
    unavailable = {**_INT_OR_PERCENT, "description": "maxUnavailable: pods below it."}
    return _strategy(
        description,
        ("RollingUpdate", "Recreate"),
        {"maxSurge": surge, "maxUnavailable": unavailable},
    )


def _escape_hatches(what: str, *, env_from: bool = True) -> JSON:
    """What the chart does not model, passed through to the pod as Kubernetes objects
    (the API server checks them): security contexts, volumes, sidecars."""
    out: JSON = {
        "podSecurityContext": _free(
            f"The {what} pod's securityContext. On OpenShift (random UIDs) set "
            "runAsUser, runAsGroup and fsGroup to null."
        ),
        "securityContext": _free(f"The {what} container's securityContext."),
        "extraVolumes": _list(f"More volumes of the {what} pod."),
        "extraVolumeMounts": _list(f"More volume mounts of the {what} container."),
        "extraContainers": _list(f"Sidecar containers of the {what} pod."),
        "initContainers": _list(f"Init containers of the {what} pod."),
    }
    if env_from:
        out["envFrom"] = _list(
            f"More envFrom sources (ConfigMaps, Secrets) of the {what} container, after "
            "the chart's."
        )
    return out


def _tristate(description: str) -> JSON:
    return {
        "enum": ["auto", True, False],
        "description": f"{description} auto: when the cluster serves the kind's API.",
    }


def _monitor(kind: str) -> JSON:
    return _obj(
        f"prometheus-operator {kind}s for edges and operator.",
        {
            "enabled": _tristate(f"Create the {kind}s."),
            "interval": _str("Scrape interval.", pattern=r"^([0-9]+(ms|s|m|h))*$"),
            "scrapeTimeout": _str(
                "Scrape timeout (empty: the Prometheus' default).",
                pattern=r"^([0-9]+(ms|s|m|h))*$",
            ),
            "labels": _map("Labels (what your Prometheus selects monitors by)."),
            "relabelings": _list("Relabelings of the targets."),
            "metricRelabelings": _list("Relabelings of the samples."),
        },
    )


_MIN_AVAILABLE = {
    "description": "Pods that must stay up during voluntary disruptions: at least 1 (or a "
    "non-zero percentage), so a drain of nodes never takes every edge at once.",
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "pattern": r"^([1-9][0-9]?|100)%$"},
    ],
}
