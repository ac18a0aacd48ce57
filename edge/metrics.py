"""Prometheus text exposition of the edge's counters (no client library needed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class EdgeMetrics:
    publishes: int = 0
    evictions: int = 0
    closes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    connections_total: int = 0
    # (HTTP status, "http" or "close"): refused before the 101, or closed in band after it
    refusals: Counter[tuple[int, str]] = field(default_factory=Counter)
    control_refused: int = 0  # control messages not understood (ignored, answered ok: false)


def render(
    metrics: EdgeMetrics,
    *,
    connections: int,
    subscriptions: int,
    deliveries: int,
    dropped: int,
    nats_connected: bool,
    accepting: bool,
) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: dict[str, float]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples.items():
            lines.append(f"{name}{labels} {value:g}")

    metric("sb_edge_connections", "gauge", "Open client connections.", {"": connections})
    metric(
        "sb_edge_control_refused_total",
        "counter",
        "Control messages refused (malformed or unknown command): nothing was done.",
        {"": metrics.control_refused},
    )
    metric(
        "sb_edge_subscriptions",
        "gauge",
        "NATS subscriptions held for clients.",
        {"": subscriptions},
    )
    metric(
        "sb_edge_connections_total",
        "counter",
        "Connections accepted.",
        {"": metrics.connections_total},
    )
    metric(
        "sb_edge_deliveries_total", "counter", "Events handed to client outboxes.", {"": deliveries}
    )
    metric(
        "sb_edge_publishes_total", "counter", "Client publishes accepted.", {"": metrics.publishes}
    )
    metric(
        "sb_edge_dropped_messages_total",
        "counter",
        "Backbone messages not delivered: not UTF-8, or a malformed presence frame.",
        {"": dropped},
    )
    metric(
        "sb_edge_slow_consumer_evictions_total",
        "counter",
        "Connections closed 1013.",
        {"": metrics.evictions},
    )
    metric(
        "sb_edge_errors_total",
        "counter",
        "Error frames sent, by code.",
        {f'{{code="{code}"}}': n for code, n in sorted(metrics.errors.items())},
    )
    metric(
        "sb_edge_closes_total",
        "counter",
        "Connections closed by the edge, by close code.",
        {f'{{code="{code}"}}': n for code, n in sorted(metrics.closes.items())},
    )
    metric(
        "sb_edge_upgrade_refusals_total",
        "counter",
        "Upgrades refused, by HTTP status and how (http: the status; close: 101, then a close).",
        {f'{{status="{s}",via="{via}"}}': n for (s, via), n in sorted(metrics.refusals.items())},
    )
    metric(
        "sb_edge_nats_connected",
        "gauge",
        "1 while the NATS backbone is connected.",
        {"": int(nats_connected)},
    )
    metric(
        "sb_edge_accepting", "gauge", "1 while new connections are accepted.", {"": int(accepting)}
    )
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, float]:
    """Samples by `name{labels}`; used by tests and benchmarks to read /metrics."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples
