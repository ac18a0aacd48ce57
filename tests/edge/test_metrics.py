"""The edge's metrics: bounded labels, histograms, a registry per edge."""

from __future__ import annotations

import pytest

from edge.metrics import (
    ERROR_CODES,
    LATENCY_BUCKETS,
    EdgeCollector,
    EdgeMetrics,
    Histogram,
    Live,
    exposition,
    parse,
    registry_for,
)
from edge.settings import load_edge_settings
from switchboard.contract.settings import SettingsError

IDLE = Live(
    connections=0, subscriptions=0, deliveries=0, dropped=0, nats_connected=True, accepting=True
)


def scrape(metrics: EdgeMetrics) -> dict[str, float]:
    body, _ = exposition(registry_for(EdgeCollector(metrics, lambda: IDLE)))
    return parse(body.decode())


def test_backend_codes_outside_the_known_set_count_as_other() -> None:
    metrics = EdgeMetrics(ERROR_CODES | {"conflict"})
    for code in ("forbidden", "conflict", 'bad"code', "back\\slash", "x" * 10_000, "ünïcode"):
        metrics.count_error(code)
    errors = {k: v for k, v in scrape(metrics).items() if k.startswith("sb_edge_errors_total")}
    assert errors == {
        'sb_edge_errors_total{code="forbidden"}': 1,
        'sb_edge_errors_total{code="conflict"}': 1,
        'sb_edge_errors_total{code="other"}': 4,
    }


def test_close_codes_a_peer_makes_up_count_as_other() -> None:
    metrics = EdgeMetrics()
    for code in (1000, 1001, 1006, 4001, 3999, 4999, 1014):
        metrics.count_close(code)
    closes = {k: v for k, v in scrape(metrics).items() if k.startswith("sb_edge_closes_total")}
    assert closes == {
        'sb_edge_closes_total{code="1000"}': 1,
        'sb_edge_closes_total{code="1001"}': 1,
        'sb_edge_closes_total{code="1006"}': 1,
        'sb_edge_closes_total{code="4001"}': 1,
        'sb_edge_closes_total{code="other"}': 3,
    }


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = Histogram((0.001, 0.01, 1.0))
    for value in (0.0005, 0.001, 0.002, 0.01, 5.0):
        histogram.observe(value)
    assert histogram.buckets() == [("0.001", 2), ("0.01", 4), ("1.0", 4), ("+Inf", 5)]
    assert histogram.total == pytest.approx(5.0135)
    with pytest.raises(ValueError, match="increasing"):
        Histogram((0.1, 0.01))


def test_latency_from_the_future_counts_as_zero() -> None:
    """Two nodes' clocks differ: a negative delay must not lower the sum (rates would
    go negative)."""
    metrics = EdgeMetrics()
    metrics.observe_latency(-0.5)
    metrics.observe_latency(0.0003)
    samples = scrape(metrics)
    assert samples['sb_edge_delivery_latency_seconds_bucket{le="0.0001"}'] == 1
    assert samples['sb_edge_delivery_latency_seconds_bucket{le="0.0005"}'] == 2
    assert samples["sb_edge_delivery_latency_seconds_count"] == 2
    assert samples["sb_edge_delivery_latency_seconds_sum"] == pytest.approx(0.0003)
    assert LATENCY_BUCKETS[0] < 0.001 and LATENCY_BUCKETS[-1] >= 5  # sub-ms to seconds


def test_two_edges_in_one_process_keep_their_own_counts() -> None:
    """Each edge's registry is its own (the library's global one would refuse a second
    process collector, and would merge the counts)."""
    first, second = EdgeMetrics(), EdgeMetrics()
    first.publishes += 3
    first.handshakes["accepted"].observe(0.002)
    assert scrape(first)["sb_edge_publishes_total"] == 3
    assert scrape(second)["sb_edge_publishes_total"] == 0
    assert scrape(second)['sb_edge_handshake_duration_seconds_count{result="accepted"}'] == 0
    assert scrape(first)["process_resident_memory_bytes"] > 0


def test_the_edge_serves_text_and_every_type_is_kept() -> None:
    """Text 0.0.4 only: in OpenMetrics the gauge `sb_edge_connections` and the counter
    `sb_edge_connections_total` would be one family name twice."""
    metrics = EdgeMetrics()
    metrics.count_refusal(401, in_band=True)
    body, content_type = exposition(registry_for(EdgeCollector(metrics, lambda: IDLE)))
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    for name, kind in (
        ("sb_edge_connections", "gauge"),
        ("sb_edge_connections_total", "counter"),
        ("sb_edge_upgrade_refusals_total", "counter"),
        ("sb_edge_delivery_latency_seconds", "histogram"),
        ("sb_edge_handshake_duration_seconds", "histogram"),
        ("process_open_fds", "gauge"),
    ):
        assert f"# TYPE {name} {kind}\n" in text
    assert "_created" not in text  # nothing reads them: one series less per counter
    assert parse(text)['sb_edge_upgrade_refusals_total{status="401",via="close"}'] == 1


@pytest.mark.parametrize("value", ['["bad\\"code"]', '["a b"]', '[""]', f'["{"x" * 65}"]'])
def test_metrics_error_codes_must_be_plain_names(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SB_EDGE_METRICS_ERROR_CODES", value)
    with pytest.raises(SettingsError, match="SB_EDGE_METRICS_ERROR_CODES"):
        load_edge_settings(jwt_secret="x")


def test_metrics_error_codes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    codes = ",".join(f'"c{n}"' for n in range(65))
    monkeypatch.setenv("SB_EDGE_METRICS_ERROR_CODES", f"[{codes}]")
    with pytest.raises(SettingsError, match=r"SB_EDGE_METRICS_ERROR_CODES.*at most 64"):
        load_edge_settings(jwt_secret="x")
    monkeypatch.setenv("SB_EDGE_METRICS_ERROR_CODES", '["conflict", "seat.taken"]')
    assert load_edge_settings(jwt_secret="x").metrics_error_codes == ["conflict", "seat.taken"]
