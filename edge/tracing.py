"""The edge's spans, named and attributed by the OpenTelemetry semantic conventions.

- `GET /v1/ws`, `GET /v1/sse`, `POST /v1/messages` (SERVER): the upgrade, an SSE
  stream's opening, a message posted, with `http.response.status_code`; a client's
  `traceparent` on the request continues its trace.
- `publish <subject>` (PRODUCER, `messaging.operation.type=send`): a client's publish
  into NATS; `traceparent` goes into the NATS headers.
- `process <subject>` (CONSUMER, `process`): one per edge per traced message, with the
  number of connections it went to (never one span per connection).
- `<subject>` (CLIENT) for an RPC: the backend answering `sb.rpc.<method>` continues
  it as the SERVER side from the `traceparent` in the request's headers.
- `drain` (INTERNAL): a drain from start to the last connection moved; the request
  for a grant carries its context, and the operator's grant links to it.
- `shed` (INTERNAL): a shed from the operator's command to the last connection
  moved; it links to the operator's `rebalance EdgePool` span that asked for it.

When no exporter is configured (`telemetry.enabled()` false) none of this runs: the
hot paths pay one boolean test per message.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from switchboard import telemetry

TRACER_NAME = "switchboard.edge"
DEFAULT_SERVICE = "switchboard-edge"

_NO_SPAN: nullcontext[None] = nullcontext(None)

enabled = telemetry.enabled


def configure_from_env(pod: str) -> bool:
    """Install the SDK when `OTEL_*` asks for an exporter (service `switchboard-edge`)."""
    return telemetry.configure(DEFAULT_SERVICE, pod)


def tracer() -> Tracer:
    return telemetry.tracer(TRACER_NAME)


def inject(headers: dict[str, str], span: Span | None) -> None:
    """Add `traceparent` for `span` to outgoing NATS headers."""
    if span is not None:
        telemetry.inject(headers, span)


def _messaging(
    subject: str, operation: str, kind: str, size: int, client: str
) -> dict[str, AttributeValue]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.name": operation,
        "messaging.operation.type": kind,
        "messaging.message.body.size": size,
        "messaging.client.id": client,
    }


def publish_span(
    subject: str, size: int, user: str, conn: str, pod: str
) -> AbstractContextManager[Span | None]:
    """The PRODUCER span of a client's publish (a null context when tracing is off)."""
    if not telemetry.enabled():
        return _NO_SPAN
    attributes = _messaging(subject, "publish", "send", size, f"sb-edge:{pod}")
    attributes.update({"enduser.id": user, "switchboard.connection.id": conn})
    return tracer().start_as_current_span(
        f"publish {subject}", kind=SpanKind.PRODUCER, attributes=attributes
    )


def rpc_span(
    subject: str, method: str, size: int, user: str, conn: str, pod: str
) -> AbstractContextManager[Span | None]:
    """The CLIENT side of an RPC (request-reply over NATS) to a backend."""
    if not telemetry.enabled():
        return _NO_SPAN
    attributes = _messaging(subject, "request", "send", size, f"sb-edge:{pod}")
    attributes.update(
        {
            "rpc.system": "switchboard",
            "rpc.method": method,
            "enduser.id": user,
            "switchboard.connection.id": conn,
        }
    )
    return tracer().start_as_current_span(subject, kind=SpanKind.CLIENT, attributes=attributes)


def failed(span: Span | None, code: str) -> None:
    """Mark a span failed with the client-visible error code."""
    if span is not None:
        span.set_attribute("error.type", code)
        span.set_status(Status(StatusCode.ERROR, code))


def start_delivery(subject: str, headers: Mapping[str, str] | None, pod: str) -> Span | None:
    """The CONSUMER span of one message's delivery on this edge, for traced messages only."""
    if not telemetry.enabled() or not headers:
        return None
    traceparent = headers.get("traceparent")
    if traceparent is None or (traceparent.endswith("-00") and telemetry.parent_based()):
        return None  # nothing to continue, or a parent that was not sampled: no span at all
    parent = telemetry.extract(headers)
    return tracer().start_span(
        f"process {subject}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=_messaging(subject, "process", "process", 0, f"sb-edge:{pod}"),
    )


def end_delivery(span: Span, size: int, connections: int) -> None:
    """Close a delivery span with the body size and how many connections it reached."""
    span.set_attribute("messaging.message.body.size", size)
    span.set_attribute("switchboard.delivery.connections", connections)
    span.end()


class _Headers(Protocol):
    def get(self, name: str) -> str | None: ...


def _server_attributes(
    method: str, route: str, path: str, headers: _Headers, port: int, peer: tuple[str, int] | None
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method,
        "http.route": route,
        "url.path": path.partition("?")[0],  # never the query: it may hold a ticket
        "url.scheme": "http",
        "server.port": port,
        "network.protocol.version": "1.1",
        "user_agent.original": headers.get("user-agent") or "",
    }
    if peer is not None:
        attributes["client.address"], attributes["client.port"] = peer
    return attributes


def _caller(headers: _Headers) -> Context | None:
    carrier = {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k)) is not None}
    return telemetry.extract(carrier)


def server_span(
    method: str,
    route: str,
    path: str,
    headers: _Headers,
    port: int,
    peer: tuple[str, int] | None,
) -> Span | None:
    """The SERVER span of a WebSocket upgrade or an SSE stream's opening, ended by
    `end_server` once admission has decided; a caller's `traceparent` is its parent."""
    if not telemetry.enabled():
        return None
    return tracer().start_span(
        f"{method} {route}",
        context=_caller(headers),
        kind=SpanKind.SERVER,
        attributes=_server_attributes(method, route, path, headers, port, peer),
    )


def request_span(
    method: str, route: str, path: str, headers: _Headers, port: int
) -> AbstractContextManager[Span | None]:
    """The SERVER span of one HTTP request answered in place (`POST /v1/messages`),
    current while it runs, so its publish or RPC is a child."""
    if not telemetry.enabled():
        return _NO_SPAN
    return tracer().start_as_current_span(
        f"{method} {route}",
        context=_caller(headers),
        kind=SpanKind.SERVER,
        attributes=_server_attributes(method, route, path, headers, port, None),
    )


def answered(span: Span | None, status: int) -> None:
    """The status of a request span (an error status for a 5xx, as the conventions say)."""
    if span is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, str(status)))


def end_server(span: Span | None, status: int, close_code: int | None = None) -> None:
    if span is None:
        return
    answered(span, status)
    if close_code is not None:
        span.set_attribute("switchboard.close_code", close_code)
    span.end()


def drain_span(pod: str, reason: str, connections: int) -> Span | None:
    """The edge's drain, from the stop of admissions to the last connection moved."""
    if not telemetry.enabled():
        return None
    return tracer().start_span(
        "drain",
        kind=SpanKind.INTERNAL,
        attributes={
            "switchboard.pod": pod,
            "switchboard.drain.reason": reason,
            "switchboard.drain.connections": connections,
        },
    )


def shed_span(
    pod: str, reason: str, connections: int, rate: float, headers: Mapping[str, str] | None
) -> Span | None:
    """A shed, from the command that started it to the last connection moved; linked
    to the operator's span that sent the command (its context in `headers`)."""
    if not telemetry.enabled():
        return None
    return tracer().start_span(
        "shed",
        kind=SpanKind.INTERNAL,
        links=telemetry.link_to(headers),
        attributes={
            "switchboard.pod": pod,
            "switchboard.shed.reason": reason,
            "switchboard.shed.connections": connections,
            "switchboard.shed.rate": rate,
        },
    )


__all__ = [
    "SpanKind",
    "answered",
    "configure_from_env",
    "drain_span",
    "end_delivery",
    "end_server",
    "inject",
    "publish_span",
    "request_span",
    "rpc_span",
    "server_span",
    "shed_span",
    "start_delivery",
    "tracer",
]
