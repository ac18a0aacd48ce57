"""Which silent edge pod the operator replaces, and when it must not (a pure function)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from switchboard import telemetry
from switchboard_operator import tracing
from switchboard_operator.cutoff import CutOffPolicy, PodReport, decide_cut_off

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
