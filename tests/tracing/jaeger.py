"""A real Jaeger v2 as a process: OTLP in (HTTP and gRPC), traces in memory, the query API out.

Every port is a free one picked here, so parallel sessions do not collide; the query
API is Jaeger's HTTP API (`/api/traces`, `/api/services`), the one its UI reads.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard.cli.launch import LocalProcess, free_port, wait_for_port

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_query:
    enable_tracing: false
    storage:
      traces: memory
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memory:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{http}
      grpc:
        endpoint: 127.0.0.1:{grpc}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memory
"""


@dataclass
class Span:
    """One span as Jaeger's API gives it, with its process (service) resolved."""

    trace_id: str
    span_id: str
    name: str
    service: str
    tags: dict[str, Any]
    process_tags: dict[str, Any]
    references: list[dict[str, str]]

    def parent(self) -> str | None:
        return next(
            (r["spanID"] for r in self.references if r["refType"] == "CHILD_OF"),
            None,
        )

    def follows(self) -> list[tuple[str, str]]:
        """(trace id, span id) of each span link (Jaeger's FOLLOWS_FROM references)."""
        return [
            (r["traceID"], r["spanID"]) for r in self.references if r["refType"] == "FOLLOWS_FROM"
        ]


def _tags(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in items or []}


def spans_of(trace: dict[str, Any]) -> list[Span]:
    processes = trace["processes"]
    return [
        Span(
            trace_id=s["traceID"],
            span_id=s["spanID"],
            name=s["operationName"],
            service=processes[s["processID"]]["serviceName"],
            tags=_tags(s.get("tags")),
            process_tags=_tags(processes[s["processID"]].get("tags")),
            references=s.get("references") or [],
        )
        for s in trace["spans"]
    ]


class Jaeger:
    """`jaeger --config <file>` with its ports; `stop()` ends it."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.query_port = free_port()
        config = workdir / "jaeger.yaml"
        config.write_text(
            CONFIG.format(
                query=self.query_port,
                query_grpc=free_port(),
                http=self.http_port,
                grpc=self.grpc_port,
            )
        )
        self.log_path = workdir / "jaeger.log"
        self.process = LocalProcess(
            [str(binary), "--config", str(config)], None, str(self.log_path)
        )

    def start(self, timeout_s: float = 60) -> Jaeger:
        self.process.spawn()
        deadline = time.monotonic() + timeout_s
        for port in (self.http_port, self.grpc_port, self.query_port):
            self.process.check_alive("jaeger")
            wait_for_port(port, max(0.1, deadline - time.monotonic()))
        return self

    def stop(self) -> None:
        self.process.stop(10)

    @property
    def otlp_http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def otlp_grpc(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def otel_env(self, service: str | None = None, *, grpc: bool = False) -> dict[str, str]:
        """What a process needs to export here: the standard variables only."""
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if grpc else "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_grpc if grpc else self.otlp_http,
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach Jaeger soon after they end
        }
        if service is not None:
            env["OTEL_SERVICE_NAME"] = service
        return env

    def api(self, path: str, **query: str | int) -> Any:
        url = f"http://127.0.0.1:{self.query_port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def services(self) -> list[str]:
        return list(self.api("/api/services")["data"] or [])

    def traces(self, service: str, **query: str | int) -> list[list[Span]]:
        """Recent traces with a span of `service` (each trace whole, every service)."""
        found = self.api("/api/traces", service=service, limit=200, lookback="1h", **query)
        return [spans_of(t) for t in found["data"] or []]

    def trace(self, trace_id: str) -> list[Span]:
        (found,) = self.api(f"/api/traces/{trace_id}")["data"]
        return spans_of(found)

    def wait_for(self, find: Callable[[], Any], timeout_s: float = 20, what: str = "spans") -> Any:
        """Poll Jaeger until `find()` returns something truthy (export is batched)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                result = find()
            except (OSError, ValueError, KeyError):
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"Jaeger never showed {what} in {timeout_s} s")
            time.sleep(0.2)


def all_spans(traces: list[list[Span]]) -> Iterator[Span]:
    for trace in traces:
        yield from trace
