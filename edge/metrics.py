"""The edge's Prometheus metrics, exposed through `prometheus_client`.

The hot path only bumps plain integers (the edge is one event loop: no lock is
needed, and the library's own `Counter.inc`/`Histogram.observe` take one on every
call, ~4 µs per observation against ~0.5 µs here). At scrape time `EdgeCollector`
turns them into metric families and the library writes (and escapes) the
exposition. Each `EdgeServer` has its own
registry, so two edges in one process never share a count.

Label sets are bounded: an error code or close code outside the known set is
counted as `other`, whatever a backend or a peer sends.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from switchboard.contract.codes import CloseCode, ErrorCode

OTHER = "other"
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"

# The edge's own error codes; a backend's `Sb-Error` code outside these (and the
# ones the settings add) is counted as `other`.
ERROR_CODES: frozenset[str] = frozenset(code.value for code in ErrorCode)
# Close codes the edge sends, plus 1005 (peer closed without a code) and 1006 (no
# close frame): a peer may send any code from 3000 to 4999, each would be a series.
CLOSE_CODES: frozenset[int] = frozenset(CloseCode) | {1005, 1006}

# Seconds. Inside one cluster a delivery takes well under a millisecond to a few;
# the upper buckets catch backlogs (a slow consumer, a replay after a NATS outage).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Seconds. A handshake checks a JWT (tens of µs for HS256, more for RS256/ES256),
# and for a ticket asks NATS; seconds mean a starved event loop.
HANDSHAKE_BUCKETS: tuple[float, ...] = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class Histogram:
    """Bucket counts kept by one bisect and one increment per observation; the
    cumulative buckets Prometheus expects are computed at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket bounds must be increasing: {bounds}")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # `le` is inclusive: bisect_left puts a value equal to a bound in that bucket
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, out = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        return out


@dataclass
class EdgeMetrics:
    """What the edge counts as it goes (series made at scrape time by EdgeCollector)."""

    error_codes: Collection[str] = ERROR_CODES
    publishes: int = 0
    evictions: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    connections_total: int = 0
    # (HTTP status, "http" or "close"): refused before the 101, or closed in band after it
    refusals: Counter[tuple[int, str]] = field(default_factory=Counter)
    control_refused: int = 0  # control messages not understood (ignored, answered ok: false)
    sse_streams: int = 0  # open SSE streams (also in the connections gauge)
    sse_streams_total: int = 0
    sse_refusals: Counter[int] = field(default_factory=Counter)  # by HTTP status
    posts: Counter[int] = field(default_factory=Counter)  # `POST /v1/messages`, by HTTP status
    # publish (the `Sb-Ts-Us` stamp) to handing the event to local connections
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    # the upgrade request read to the answer (101 or a refusal), by outcome
    handshakes: dict[str, Histogram] = field(
        default_factory=lambda: {
            "accepted": Histogram(HANDSHAKE_BUCKETS),
            "refused": Histogram(HANDSHAKE_BUCKETS),
        }
    )

    def count_error(self, code: str) -> None:
        self.errors[code if code in self.error_codes else OTHER] += 1

    def count_close(self, code: int) -> None:
        self.closes[str(code) if code in CLOSE_CODES else OTHER] += 1

    def count_refusal(self, status: int, in_band: bool) -> None:
        self.refusals[status, "close" if in_band else "http"] += 1

    def count_post(self, status: int) -> None:
        self.posts[status] += 1

    def observe_latency(self, seconds: float) -> None:
        """A publish stamped later than now (clocks of two nodes differ) counts as 0."""
        self.latency.observe(seconds if seconds > 0 else 0.0)


@dataclass(frozen=True)
class Live:
    """Numbers the edge keeps elsewhere, read at scrape time."""

    connections: int
    subscriptions: int
    deliveries: int
    dropped: int
    nats_connected: bool
    accepting: bool


class EdgeCollector(Collector):
    """The `sb_edge_*` series: the same names, types and labels as always."""

    def __init__(self, metrics: EdgeMetrics, live: Callable[[], Live]) -> None:
        self._metrics = metrics
        self._live = live

    def collect(self) -> Iterator[Metric]:
        m, live = self._metrics, self._live()
        yield GaugeMetricFamily("sb_edge_connections", "Open client connections.", live.connections)
        yield _counter(
            "sb_edge_control_refused",
            "Control messages refused (malformed or unknown command): nothing was done.",
            m.control_refused,
        )
        yield GaugeMetricFamily(
            "sb_edge_subscriptions", "NATS subscriptions held for clients.", live.subscriptions
        )
        yield _counter("sb_edge_connections", "Connections accepted.", m.connections_total)
        yield _counter("sb_edge_deliveries", "Events handed to client outboxes.", live.deliveries)
        yield _counter("sb_edge_publishes", "Client publishes accepted.", m.publishes)
        yield _counter(
            "sb_edge_dropped_messages",
            "Backbone messages not delivered: not UTF-8, or a malformed presence frame.",
            live.dropped,
        )
        yield _counter("sb_edge_slow_consumer_evictions", "Connections closed 1013.", m.evictions)
        yield _labelled(
            "sb_edge_errors",
            "Error frames sent, by code (a backend's code outside the known set: other).",
            ["code"],
            [((code,), n) for code, n in m.errors.items()],
        )
        yield _labelled(
            "sb_edge_closes",
            "Connections closed by the edge, by close code (codes nobody defined: other).",
            ["code"],
            [((code,), n) for code, n in m.closes.items()],
        )
        yield _labelled(
            "sb_edge_upgrade_refusals",
            "Upgrades refused, by HTTP status and how (http: the status; close: 101, then a "
            "close).",
            ["status", "via"],
            [((str(status), via), n) for (status, via), n in m.refusals.items()],
        )
        yield GaugeMetricFamily(
            "sb_edge_sse_streams",
            "Open Server-Sent Events streams (counted in sb_edge_connections too).",
            m.sse_streams,
        )
        yield _counter("sb_edge_sse_streams", "SSE streams accepted.", m.sse_streams_total)
        yield _labelled(
            "sb_edge_sse_refusals",
            "GET /v1/sse refused, by HTTP status.",
            ["status"],
            [((str(status),), n) for status, n in m.sse_refusals.items()],
        )
        yield _labelled(
            "sb_edge_posted_messages",
            "POST /v1/messages answered, by HTTP status.",
            ["status"],
            [((str(status),), n) for status, n in m.posts.items()],
        )
        yield GaugeMetricFamily(
            "sb_edge_nats_connected",
            "1 while the NATS backbone is connected.",
            int(live.nats_connected),
        )
        yield GaugeMetricFamily(
            "sb_edge_accepting", "1 while new connections are accepted.", int(live.accepting)
        )
        latency = HistogramMetricFamily(
            "sb_edge_delivery_latency_seconds",
            "Publish (the Sb-Ts-Us stamp of an edge or backend) to the event handed to this "
            "edge's connections, once per message; includes clock skew between nodes.",
        )
        latency.add_metric([], m.latency.buckets(), m.latency.total)
        yield latency
        handshakes = HistogramMetricFamily(
            "sb_edge_handshake_duration_seconds",
            "WebSocket upgrade request read to the answer (101 or a refusal), by result.",
            labels=["result"],
        )
        for result, histogram in m.handshakes.items():
            handshakes.add_metric([result], histogram.buckets(), histogram.total)
        yield handshakes


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """A counter without `_created` (nothing reads it; one series less per counter)."""
    return CounterMetricFamily(name, doc, value=value)


def _labelled(
    name: str, doc: str, labels: list[str], samples: Iterable[tuple[tuple[str, ...], float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, n in sorted(samples):
        family.add_metric(list(values), n)
    return family


def registry_for(collector: Collector) -> CollectorRegistry:
    """A registry of its own: `collector`, and this process's CPU, memory, open fds
    (`process_*`), GC and Python version."""
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text format (0.0.4), whatever the scraper prefers: in OpenMetrics a counter's
    family is its name without `_total`, so the gauge `sb_edge_connections` and the
    counter `sb_edge_connections_total` (both kept for existing dashboards) would be
    one family twice, which OpenMetrics forbids. Prometheus reads either format."""
    return generate_latest(registry), TEXT_FORMAT


def parse(text: str) -> dict[str, float]:
    """Samples by `name{label="value",...}`, parsed by prometheus_client; used by tests
    and benchmarks to read /metrics."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
