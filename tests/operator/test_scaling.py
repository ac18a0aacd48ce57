"""Load sequences → replica decisions (EdgePool scaling is a pure function)."""

from __future__ import annotations

import pytest

from switchboard_operator.scaling import Decision, History, Limits, decide, recommended

LIMITS = Limits(min_replicas=2, max_replicas=10, target_per_pod=1000, stabilization_s=60)


@pytest.mark.parametrize(
    ("connections", "want"),
    [(0, 2), (1, 2), (2000, 2), (2001, 3), (9000, 9), (10_000, 10), (50_000, 10), (-5, 2)],
)
def test_recommended_is_ceil_clamped(connections: int, want: int) -> None:
    assert recommended(connections, LIMITS) == want


def run(
    steps: list[tuple[float, int, int]], limits: Limits = LIMITS, start: int = 2
) -> list[Decision]:
    """Feed (time, connections, draining) observations; apply each decision."""
    replicas, history, out = start, None, []
    for now, connections, draining in steps:
        decision = decide(now, connections, replicas, limits, history, draining)
        replicas, history = decision.replicas, decision.history
        out.append(decision)
    return out


def replicas_of(decisions: list[Decision]) -> list[int]:
    return [d.replicas for d in decisions]


@pytest.mark.parametrize(
    ("name", "steps", "want"),
    [
        # A spike scales up at the first observation, and down only after the window.
        (
            "spike",
            [(0, 1000, 0), (2, 8000, 0), (4, 1000, 0), (40, 1000, 0), (61, 1000, 0), (63, 1000, 0)],
            [2, 8, 8, 8, 8, 2],
        ),
        # A slow decline steps down, each step only once the window's peak has left it.
        (
            "slow decline",
            [(0, 6000, 0), (30, 5000, 0), (61, 4000, 0), (91, 3000, 0), (122, 2000, 0)],
            [6, 6, 5, 4, 3],
        ),
        # Flapping around a boundary never scales down inside the window.
        (
            "flapping",
            [(t, 3500 if t % 4 == 0 else 2500, 0) for t in range(0, 60, 2)],
            [4] * 30,
        ),
        # Clamped to max however many connections, and to min when empty.
        ("max", [(0, 99_000, 0), (2, 99_000, 0)], [10, 10]),
        ("min", [(0, 0, 0), (100, 0, 0)], [2, 2]),
        # Never down while a drain runs; down after it finishes (window already passed).
        (
            "drain in progress",
            [(0, 5000, 0), (70, 1000, 1), (90, 1000, 2), (100, 1000, 0)],
            [5, 5, 5, 2],
        ),
        # Up is allowed during a drain: the clients need somewhere to go.
        ("up during drain", [(0, 1000, 0), (2, 7000, 1)], [2, 7]),
    ],
)
def test_sequences(name: str, steps: list[tuple[float, int, int]], want: list[int]) -> None:
    assert replicas_of(run(steps, start=2)) == want, name


def test_first_observation_never_scales_down() -> None:
    """A restarted operator has no history: it must not shrink a busy fleet at once."""
    decision = decide(0, 0, 8, LIMITS, None, 0)
    assert (decision.replicas, decision.reason) == (8, "stabilizing")


def test_zero_window_scales_down_at_once() -> None:
    limits = Limits(min_replicas=1, max_replicas=10, target_per_pod=100, stabilization_s=0)
    assert replicas_of(run([(0, 900, 0), (1, 100, 0)], limits, start=1)) == [9, 1]


def test_spec_change_below_min_or_above_max_applies_at_once() -> None:
    assert decide(0, 0, 1, LIMITS, None, 0).replicas == 2
    assert decide(0, 0, 30, LIMITS, None, 0).replicas == 10
    assert decide(0, 0, 30, LIMITS, None, 3).reason == "above-max"


def test_history_keeps_only_the_window() -> None:
    history = History(since=0, recommendations=((0, 9), (30, 8), (59, 7)))
    decision = decide(100, 1000, 9, LIMITS, history, 0)
    assert list(decision.history.recommendations) == [(59, 7), (100, 2)]
    assert (decision.replicas, decision.reason) == (7, "scale-down")
