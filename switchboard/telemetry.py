"""OpenTelemetry for every Switchboard process, configured only by the standard `OTEL_*` variables.

Edge, operator, the cleanup hook and the CLI commands that talk to NATS call
`configure` once at start and `shutdown` at exit (which flushes the batch). Nothing
is installed unless the environment asks for an exporter, so a process without
`OTEL_*` keeps the API's no-op tracer and `enabled()` stays false: hot paths test
that flag before doing any tracing work.

Honoured, as the SDK's specification says: `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`
(`otlp` or `none`), `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `..._PROTOCOL`
(`http/protobuf` or `grpc`), `..._HEADERS`, `..._TIMEOUT`, `OTEL_TRACES_SAMPLER[_ARG]`
(parent-based by default, so whoever starts a trace decides for the whole path),
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, which win over this process's
defaults (`service.name` given by the caller, `service.instance.id` = the pod).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

from switchboard.contract import logs
from switchboard.contract.errors import SettingsError

log = logging.getLogger("switchboard.telemetry")

_EXPORTER_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROTOCOLS = ("http/protobuf", "grpc")
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)

_state: dict[str, Any] = {"enabled": False, "provider": None, "parent_based": False}
_tracers: dict[str, Tracer] = {}  # the SDK builds a new Tracer per get_tracer call


def enabled() -> bool:
    """True once an exporter is installed: the hot paths' one check when tracing is off."""
    return bool(_state["enabled"])


def parent_based() -> bool:
    """True when the sampler follows a remote parent's decision (the default): a message
    whose `traceparent` says "not sampled" then needs no span at all."""
    return bool(_state["parent_based"])


def requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for trace export at all."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(env.get(name) for name in _EXPORTER_VARS)


def protocol(env: Mapping[str, str] | None = None) -> str:
    """The OTLP transport asked for; an unknown one is an error naming the variable."""
    env = os.environ if env is None else env
    for key in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(key, "").strip()
        if value:
            if value not in PROTOCOLS:
                raise SettingsError(f"{key}: {value!r} is not one of {', '.join(PROTOCOLS)}")
            return value
    return "http/protobuf"


def _check(env: Mapping[str, str]) -> None:
    """The SDK only warns about these and falls back; a typo must not pass silently."""
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter and exporter not in ("otlp", "none"):
        raise SettingsError(f"OTEL_TRACES_EXPORTER: {exporter!r} is not one of otlp, none")
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in _SAMPLERS:
        raise SettingsError(
            f"OTEL_TRACES_SAMPLER: {sampler!r} is not one of {', '.join(_SAMPLERS)}"
        )
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if arg and sampler.endswith("traceidratio"):
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise SettingsError(f"OTEL_TRACES_SAMPLER_ARG: {arg!r} is not a ratio in [0, 1]")


def configure(default_service: str, instance_id: str | None = None) -> bool:
    """Install the SDK with an OTLP exporter when `OTEL_*` asks for one; True if installed."""
    env = os.environ
    if not requested(env):
        return False
    _check(env)
    transport = protocol(env)
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    exporter: SpanExporter
    if transport == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        exporter = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        exporter = HttpExporter()
    defaults: dict[str, str] = {"service.name": default_service}
    if instance_id:
        defaults["service.instance.id"] = instance_id
    # The environment (OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME) wins over defaults.
    resource = Resource.create(defaults).merge(OTELResourceDetector().detect())
    provider = SdkProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use(provider)
    log.info(
        "tracing to OTLP",
        extra={"service": resource.attributes.get("service.name"), "protocol": transport},
    )
    return True


def use(provider: TracerProvider) -> None:
    """Install a provider made elsewhere (an application embedding the edge, a test
    with the SDK's in-memory exporter) and turn the spans on."""
    from opentelemetry.sdk.trace.sampling import ParentBased

    trace.set_tracer_provider(provider)
    _tracers.clear()
    sampler = getattr(provider, "sampler", None)
    _state.update(enabled=True, provider=provider, parent_based=isinstance(sampler, ParentBased))
    logs.add_context(log_context)


def shutdown() -> None:
    """Flush what is batched and stop the exporter (at the end of a process)."""
    provider = _state["provider"]
    if provider is not None:
        provider.shutdown()
    _tracers.clear()
    _state.update(enabled=False, provider=None, parent_based=False)


@contextlib.contextmanager
def command(service: str, name: str, **attributes: str) -> Iterator[None]:
    """Trace one short-lived CLI command: configure, one root span, flush at the end."""
    if not configure(service):
        yield
        return
    try:
        with tracer("switchboard.cli").start_as_current_span(name, attributes=attributes):
            yield
    finally:
        shutdown()


def log_context() -> dict[str, str]:
    """`trace_id` and `span_id` of the active span, for the JSON log line."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }


def tracer(name: str) -> Tracer:
    """The tracer called `name`, made once per provider (hot paths ask per message)."""
    found = _tracers.get(name)
    if found is None:
        found = _tracers[name] = trace.get_tracer(name)
    return found


def inject(headers: dict[str, str], span: Span | None = None) -> None:
    """Add `traceparent` (and `tracestate`) for `span`, or the active span, to headers."""
    context = None if span is None else trace.set_span_in_context(span)
    if trace.get_current_span(context).get_span_context().is_valid:
        propagate.inject(headers, context=context)


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The remote parent carried by a message or request, if any."""
    if not headers or "traceparent" not in headers:
        return None
    return propagate.extract(dict(headers))


def link_to(headers: Mapping[str, str] | None) -> list[Link]:
    """A span link to the span that sent `headers` (a cause, not a parent)."""
    parent = extract(headers)
    if parent is None:
        return []
    context = trace.get_current_span(parent).get_span_context()
    return [Link(context)] if context.is_valid else []


__all__ = [
    "PROTOCOLS",
    "SpanKind",
    "command",
    "configure",
    "enabled",
    "extract",
    "inject",
    "link_to",
    "log_context",
    "requested",
    "shutdown",
    "tracer",
    "use",
]
