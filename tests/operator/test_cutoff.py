"""Which silent edge pod the operator replaces, and when it must not (a pure function)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from switchboard import telemetry
from switchboard.contract.messages import EdgeStats
from switchboard_operator import backbone, tracing
from switchboard_operator.cutoff import CutOffPolicy, PodReport, decide_cut_off, report_of
from switchboard_operator.handlers import _running_s

POLICY = CutOffPolicy(after_s=30, fresh_s=10, pause_s=60)


def reports(**silent: float | None) -> dict[str, PodReport]:
    """Pods by name → seconds since their last stats (None: never seen)."""
    return {name: PodReport(terminating=False, silent_s=s) for name, s in silent.items()}


@pytest.mark.parametrize(
    ("name", "pods", "since_last", "want_pod", "want_reason", "want_silent"),
    [
        ("all report", reports(a=1, b=2, c=0.5), None, None, "none", ()),
        ("silent, but not long enough yet", reports(a=29.9, b=1), None, None, "none", ()),
        ("cut off while a peer reports", reports(a=30, b=1), None, "a", "replace", ("a",)),
        (
            "the longest silent goes first, one at a time",
            reports(a=45, b=90, c=2),
            None,
            "b",
            "replace",
            ("a", "b"),
        ),
        # Everyone silent: NATS itself (or our watch of it) is down; replacing pods
        # would only add a reconnect storm to the outage.
        (
            "no pod reports",
            reports(a=40, b=45, c=300),
            None,
            None,
            "backbone-silent",
            ("a", "b", "c"),
        ),
        # A peer reported 11 s ago: stale too, so it proves nothing about NATS now.
        ("the only peer is stale", reports(a=40, b=11), None, None, "backbone-silent", ("a",)),
        # Never seen by this operator (starting up, or before our restart): not judged.
        ("a pod never seen is not judged", reports(a=None, b=1), None, None, "none", ()),
        (
            "a pod never seen proves nothing",
            reports(a=40, b=None),
            None,
            None,
            "backbone-silent",
            ("a",),
        ),
        ("paced: too soon after the last", reports(a=40, b=1), 59.0, None, "pausing", ("a",)),
        ("paced: the pause is over", reports(a=40, b=1), 60.0, "a", "replace", ("a",)),
    ],
)
def test_decisions(
    name: str,
    pods: dict[str, PodReport],
    since_last: float | None,
    want_pod: str | None,
    want_reason: str,
    want_silent: tuple[str, ...],
) -> None:
    decided = decide_cut_off(pods, POLICY, since_last)
    assert (decided.replace, decided.reason, decided.silent) == (want_pod, want_reason, want_silent)


def test_terminating_pods_are_neither_replaced_nor_proof() -> None:
    """A pod already being deleted (draining) is on its way out: not replaced again, and
    its stats, fresh or not, say nothing about the others."""
    pods = {
        "a": PodReport(terminating=True, silent_s=120),
        "b": PodReport(terminating=False, silent_s=1),
    }
    assert decide_cut_off(pods, POLICY, None).reason == "none"
    pods = {
        "a": PodReport(terminating=False, silent_s=120),
        "b": PodReport(terminating=True, silent_s=1),
    }
    decided = decide_cut_off(pods, POLICY, None)
    assert (decided.replace, decided.reason) == (None, "backbone-silent")


@pytest.mark.parametrize(
    ("name", "since_report", "since_start", "watching", "want"),
    [
        ("heard from: its last report counts", 12.0, 3600.0, 60.0, PodReport(False, 12.0)),
        # Running before this operator watched, not heard since: silent since the watch.
        (
            "unheard, running before the watch began",
            None,
            3600.0,
            45.0,
            PodReport(False, 45.0, heard=False),
        ),
        # Started since, and not heard: never reached NATS, never Ready, no clients.
        ("unheard, started since", None, 40.0, 45.0, PodReport(False, None, heard=False)),
        ("unheard and not running", None, None, 45.0, PodReport(False, None, heard=False)),
    ],
)
def test_what_is_known_of_a_pod(
    name: str,
    since_report: float | None,
    since_start: float | None,
    watching: float,
    want: PodReport,
) -> None:
    assert report_of(False, since_report, since_start, watching) == want


def test_a_pod_silent_since_before_an_operator_restart_is_replaced() -> None:
    """Its stats expired from `sb_edges` before this operator started: it is judged by
    how long this operator has watched, and a peer's report proves NATS works."""
    pods = {
        "old": report_of(False, None, 7200.0, 31.0),
        "peer": report_of(False, 1.5, 7200.0, 31.0),
    }
    assert decide_cut_off(pods, POLICY, None).replace == "old"
    # Too soon after the restart: nothing yet.
    pods["old"] = report_of(False, None, 7200.0, 29.0)
    assert decide_cut_off(pods, POLICY, None).reason == "none"


def test_a_pod_never_heard_from_proves_nothing_about_nats() -> None:
    """Silent too, or just started: no proof that NATS works for the others."""
    pods = {"cut": report_of(False, 40.0, 7200.0, 600.0), "new": report_of(False, None, 2.0, 600.0)}
    decided = decide_cut_off(pods, POLICY, None)
    assert (decided.replace, decided.reason) == (None, "backbone-silent")
    pods["also"] = report_of(False, None, 7200.0, 600.0)
    decided = decide_cut_off(pods, POLICY, None)
    assert (decided.replace, decided.reason) == (None, "backbone-silent")


def pod(*started_at: str | None) -> dict[str, object]:
    """A pod's status with one container per entry: running since that time, or waiting."""
    return {
        "status": {
            "containerStatuses": [
                {"state": {"running": {"startedAt": t}} if t else {"waiting": {}}}
                for t in started_at
            ]
        }
    }


@pytest.mark.parametrize(
    ("name", "status", "want"),
    [
        ("one container, 90 s ago", pod("2026-11-30T12:00:00Z"), 90.0),
        (
            "the most recent start counts (a restarted container)",
            pod("2026-11-30T11:00:00Z", "2026-11-30T12:01:00Z"),
            30.0,
        ),
        ("a container waiting: not running", pod("2026-11-30T12:00:00Z", None), None),
        ("no status yet", {"status": {}}, None),
        ("an unreadable time", pod("yesterday"), None),
    ],
)
def test_how_long_a_pod_has_run(name: str, status: dict[str, object], want: float | None) -> None:
    wall = datetime(2026, 11, 30, 12, 1, 30, tzinfo=UTC).timestamp()
    assert _running_s(status, wall) == want


def test_zero_disables() -> None:
    off = CutOffPolicy(after_s=0, fresh_s=10, pause_s=60)
    decided = decide_cut_off(reports(a=1000, b=1), off, None)
    assert (decided.replace, decided.reason) == (None, "disabled")


def test_a_replacement_is_a_span_naming_the_pod_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider of the test's own: OpenTelemetry's global one can be set only once per
    process, and another test may have set it already."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "enabled", lambda: True)
    monkeypatch.setattr(telemetry, "tracer", provider.get_tracer)
    tracing.replaced_silent_pod("ns/edge", "edge-a", 31.26, ("edge-a", "edge-b"))
    (span,) = exporter.get_finished_spans()
    assert span.name == "replace silent pod"
    assert dict(span.attributes or {}) == {
        "switchboard.edgepool": "ns/edge",
        "switchboard.pod": "edge-a",
        "switchboard.cut_off.silent_seconds": 31.3,
        "switchboard.cut_off.silent_pods": ("edge-a", "edge-b"),
    }


def test_a_report_older_than_an_hour_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod gone without deleting its entry is not kept for ever; a pod still there is
    then judged by `report_of` from when it started."""
    ops = backbone.OperatorBackbone("nats://127.0.0.1:4222", "sb", 10.0)  # never connected
    now = 1000.0
    monkeypatch.setattr("switchboard_operator.backbone.time.monotonic", lambda: now)
    ops._record("edge-gone", EdgeStats("edge-gone").encode())
    now += 20.0
    ops._record("edge-here", EdgeStats("edge-here").encode())
    now += backbone.FORGET_AFTER_S - 10.0
    assert ops.edge_silence() == {"edge-here": backbone.FORGET_AFTER_S - 10.0}
    now += 20.0
    assert ops.edge_silence() == {}
