"""OpenTelemetry traces: spans for the upgrade, client requests, NATS publish and delivery.

W3C `traceparent` travels in NATS headers, so a publish on one edge and its
delivery on another are one trace. The SDK and its OTLP exporter are set up
only when the standard `OTEL_*` variables ask for an exporter; otherwise the
API's no-op tracer costs next to nothing on the hot path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer

TRACER_NAME = "switchboard.edge"
_EXPORTER_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return False
    return any(env.get(name) for name in _EXPORTER_VARS) or "OTEL_TRACES_EXPORTER" in env


def configure_from_env(pod: str) -> bool:
    """Install the SDK with an OTLP/HTTP exporter when OTEL_* asks for one."""
    if not tracing_requested():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": "switchboard-edge", "service.instance.id": pod})
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


def tracer() -> Tracer:
    return trace.get_tracer(TRACER_NAME)


def inject(headers: dict[str, str], span: Span) -> None:
    """Add `traceparent` for `span` to outgoing NATS headers."""
    if span.get_span_context().is_valid:
        propagate.inject(headers, context=trace.set_span_in_context(span))


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The remote parent carried by a NATS message, if any."""
    if not headers or "traceparent" not in headers:
        return None
    return propagate.extract(dict(headers))


def start_delivery(subject: str, headers: Mapping[str, str] | None, pod: str) -> Span | None:
    """A CONSUMER span for one delivery on this edge, only for traced messages."""
    parent = extract(headers)
    if parent is None:
        return None
    return tracer().start_span(
        "sb.deliver",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={"messaging.destination.name": subject, "sb.pod": pod},
    )


__all__ = ["SpanKind", "configure_from_env", "inject", "start_delivery", "tracer"]
