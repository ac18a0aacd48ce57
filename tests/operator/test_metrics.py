"""The operator's metrics: series that follow the pools and pods that exist."""

from __future__ import annotations

import math

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from edge.metrics import parse
from switchboard_operator.metrics import OperatorMetrics, exposition, registry_for

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def test_the_operator_serves_openmetrics_when_asked() -> None:
    registry = registry_for(OperatorMetrics())
    body, content_type = exposition(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    parsed = openmetrics_families(body.decode())  # type: ignore[no-untyped-call]
    families = {f.name: f.type for f in parsed}
    assert families["switchboard_operator_drain_grants"] == "counter"
    assert families["switchboard_operator_drain_grant"] == "gauge"
    body, content_type = exposition(registry, None)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"


def test_operator_series_follow_pools_and_pods() -> None:
    metrics = OperatorMetrics()
    metrics.observe_pool("ns/a", ["a-1", "a-2"], connections=10, desired=2)
    metrics.observe_pool("ns/b", ["b-1"], connections=5, desired=1)
    metrics.last_grant |= {"a-1": 50.0, "b-1": 100.0}
    metrics.observe_pool("ns/a", ["a-2", "a-3"], connections=12, desired=2)  # a-1 is gone

    def samples() -> dict[str, float]:
        body, _ = exposition(registry_for(metrics), None)
        return parse(body.decode())

    now = samples()
    assert 'switchboard_operator_drain_grant{pod="a-1"}' not in now
    assert now['switchboard_operator_drain_grant{pod="b-1"}'] == 100
    assert now['switchboard_operator_pool_connections{pool="ns/a"}'] == 12
    metrics.forget_pool("ns/b")
    now = samples()
    assert not [k for k in now if "ns/b" in k or "b-1" in k]
    assert now["switchboard_operator_channel_applies_total"] == 0
    assert math.isfinite(now["process_cpu_seconds_total"])
