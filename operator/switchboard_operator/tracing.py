"""The operator's spans: why a pool has this many pods, and why a pod drains at this pace.

- `reconcile Channel` / `reconcile EdgePool` (INTERNAL): one per handler run, around
  everything it does; the Kubernetes and NATS calls it makes are inside it.
- `scale EdgePool`: each scaling decision, its inputs (connections, replicas, limits,
  draining pods) and its result (desired replicas, reason) as attributes.
- `grant drain`: the answer to an edge's request,: the pace granted, with a span link
  to the edge's `drain` span (its context arrives in the request's NATS headers),
  and the re-paces of other drains it caused.
- `rebalance EdgePool`: the sheds asked of a pool's busiest pods; the shed commands
  carry its context, and each edge's `shed` span links to it.
- `replace silent pod`: an edge pod deleted for being cut off from NATS.

Installed only when `OTEL_*` asks for an exporter (service `switchboard-operator`).
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from switchboard import telemetry

TRACER_NAME = "switchboard.operator"
DEFAULT_SERVICE = "switchboard-operator"

P = ParamSpec("P")
R = TypeVar("R")

_NO_SPAN: nullcontext[None] = nullcontext(None)


def configure_from_env() -> bool:
    """Install the SDK when `OTEL_*` asks; the instance is the pod (POD_NAME) or host."""
    return telemetry.configure(DEFAULT_SERVICE, os.environ.get("POD_NAME") or socket.gethostname())


def reconciling(kind: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run a kopf handler inside a `reconcile <kind>` span naming the object."""

    def wrap(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(handler)
        async def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            if not telemetry.enabled():
                return await handler(*args, **kwargs)
            attributes = {
                "k8s.namespace.name": str(kwargs.get("namespace") or ""),
                "switchboard.kind": kind,
                "switchboard.name": str(kwargs.get("name") or ""),
                "switchboard.handler": handler.__name__,
            }
            tracer = telemetry.tracer(TRACER_NAME)
            with tracer.start_as_current_span(f"reconcile {kind}", attributes=attributes) as span:
                try:
                    return await handler(*args, **kwargs)
                except Exception as exc:  # kopf retries; the span says why
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    raise

        return traced

    return wrap


def scaling_decision(
    pool: str,
    *,
    connections: int,
    replicas: int,
    desired: int,
    reason: str,
    draining: int,
    limits: Mapping[str, float],
) -> None:
    """Record one scaling decision (a span that starts and ends at once)."""
    if not telemetry.enabled():
        return
    attributes: dict[str, Any] = {
        "switchboard.edgepool": pool,
        "switchboard.scaling.connections": connections,
        "switchboard.scaling.replicas": replicas,
        "switchboard.scaling.desired_replicas": desired,
        "switchboard.scaling.reason": reason,
        "switchboard.scaling.draining_pods": draining,
        "switchboard.scaling.changed": desired != replicas,
    }
    attributes.update({f"switchboard.scaling.{k}": v for k, v in limits.items()})
    telemetry.tracer(TRACER_NAME).start_span("scale EdgePool", attributes=attributes).end()


def replaced_silent_pod(pool: str, pod: str, silent_s: float, silent: Sequence[str]) -> None:
    """Record the deletion of an edge pod cut off from NATS (cutoff.py decided)."""
    if not telemetry.enabled():
        return
    attributes: dict[str, Any] = {
        "switchboard.edgepool": pool,
        "switchboard.pod": pod,
        "switchboard.cut_off.silent_seconds": round(silent_s, 1),
        "switchboard.cut_off.silent_pods": list(silent),
    }
    telemetry.tracer(TRACER_NAME).start_span("replace silent pod", attributes=attributes).end()


def grant_span(
    headers: Mapping[str, str] | None, pod: str, connections: int
) -> AbstractContextManager[Span | None]:
    """The answer to an edge's drain request, linked to that edge's `drain` span."""
    if not telemetry.enabled():
        return _NO_SPAN
    return telemetry.tracer(TRACER_NAME).start_as_current_span(
        "grant drain",
        kind=SpanKind.INTERNAL,
        links=telemetry.link_to(headers),
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "switchboard.pod": pod,
            "switchboard.drain.connections": connections,
        },
    )


def granted(rate: float, repaced: int) -> None:
    """The pace granted, and how many other drains it slowed, on the active grant span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({"switchboard.drain.rate": rate, "switchboard.drain.repaced": repaced})


def rebalance_span(
    pool: str, sheds: Mapping[str, int], rate: float, imbalance: float, max_imbalance: float
) -> AbstractContextManager[Span | None]:
    """The sheds asked of a pool's pods (rebalance.py decided), current while the
    commands go out: they carry its context, and each edge's `shed` links to it."""
    if not telemetry.enabled():
        return _NO_SPAN
    return telemetry.tracer(TRACER_NAME).start_as_current_span(
        "rebalance EdgePool",
        kind=SpanKind.INTERNAL,
        attributes={
            "switchboard.edgepool": pool,
            "switchboard.rebalance.pods": sorted(sheds),
            "switchboard.rebalance.connections": sum(sheds.values()),
            "switchboard.rebalance.rate": rate,
            "switchboard.rebalance.imbalance": round(imbalance, 3),
            "switchboard.rebalance.max_imbalance": max_imbalance,
        },
    )


__all__ = [
    "configure_from_env",
    "grant_span",
    "granted",
    "rebalance_span",
    "reconciling",
    "replaced_silent_pod",
    "scaling_decision",
]
