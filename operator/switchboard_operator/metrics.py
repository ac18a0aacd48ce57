"""The operator's Prometheus metrics, exposed through `prometheus_client`.

The handlers bump plain numbers; `OperatorCollector` turns them into metric
families at scrape time and the library writes (and escapes) the exposition. The
per-pool and per-pod series follow the EdgePools and pods that exist: a deleted
pool or a pod gone from its pool drops out, so rollouts do not pile up series.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "switchboard_operator_"


@dataclass
class OperatorMetrics:
    channel_applies: int = 0
    channel_deletes: int = 0
    scalings: int = 0
    cost_patches: int = 0
    drain_grants: int = 0
    shed_requests: int = 0  # pods asked to shed
    shed_connections: int = 0  # connections they were asked to move
    cut_off_replacements: int = 0  # silent edge pods deleted while their peers reported
    pool_imbalance: dict[str, float] = field(default_factory=dict)
    pool_connections: dict[str, int] = field(default_factory=dict)
    pool_desired: dict[str, int] = field(default_factory=dict)
    pool_pods: dict[str, frozenset[str]] = field(default_factory=dict)
    last_grant: dict[str, float] = field(default_factory=dict)  # pod → reconnects/s

    def observe_pool(
        self, pool: str, pods: Collection[str], connections: int, desired: int
    ) -> None:
        """A pool's refresh: its numbers, and the pods whose grants are still shown."""
        self.pool_connections[pool] = connections
        self.pool_desired[pool] = desired
        self.pool_pods[pool] = frozenset(pods)
        self._forget_gone_pods()

    def forget_pool(self, pool: str) -> None:
        """The EdgePool was deleted: its series go."""
        for table in (
            self.pool_connections,
            self.pool_desired,
            self.pool_pods,
            self.pool_imbalance,
        ):
            table.pop(pool, None)
        self._forget_gone_pods()

    def _forget_gone_pods(self) -> None:
        known = frozenset().union(*self.pool_pods.values())
        for pod in [pod for pod in self.last_grant if pod not in known]:
            del self.last_grant[pod]


class OperatorCollector(Collector):
    """The `switchboard_operator_*` series: the same names, types and labels as always."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        for name, count, doc in (
            ("channel_applies", m.channel_applies, "Channel configs written to NATS."),
            ("channel_deletes", m.channel_deletes, "Channels cleaned up."),
            ("scalings", m.scalings, "Deployment scale changes."),
            ("deletion_cost_patches", m.cost_patches, "pod-deletion-cost patches."),
            ("drain_grants", m.drain_grants, "Drain pace grants answered."),
            ("shed_requests", m.shed_requests, "Sheds asked of hot pods (rebalancing)."),
            ("shed_connections", m.shed_connections, "Connections hot pods were asked to move."),
            (
                "cut_off_replacements",
                m.cut_off_replacements,
                "Edge pods deleted for going silent while their peers reported.",
            ),
        ):
            yield CounterMetricFamily(PREFIX + name, doc, value=count)
        gauges: tuple[tuple[str, str, Mapping[str, float], str], ...] = (
            ("pool_connections", "pool", m.pool_connections, "Live connections per EdgePool."),
            ("pool_desired_replicas", "pool", m.pool_desired, "Desired replicas per EdgePool."),
            ("drain_grant", "pod", m.last_grant, "Last pace granted to a draining pod."),
            (
                "pool_imbalance",
                "pool",
                m.pool_imbalance,
                "Busiest pod's connections over the pool's mean, minus 1.",
            ),
        )
        for name, label, values, doc in gauges:
            family = GaugeMetricFamily(PREFIX + name, doc, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
            yield family


def registry_for(metrics: OperatorMetrics) -> CollectorRegistry:
    """A registry of its own: the operator's series, and this process's CPU, memory,
    open fds (`process_*`), GC and Python version."""
    registry = CollectorRegistry()
    registry.register(OperatorCollector(metrics))
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The body and Content-Type a scraper asked for (OpenMetrics or text 0.0.4)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
