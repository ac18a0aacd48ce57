"""Drain pacing decisions, table-driven."""

from __future__ import annotations

import random

import pytest

from edge.drain import DrainPace, next_move_at, reconnect_after_ms
from switchboard.contract.messages import DrainGrant


@pytest.mark.parametrize(
    ("since", "rate", "deadline", "expected"),
    [
        (0.0, 2, 30, 0.5),  # the first move waits one interval: no burst on start
        (0.5, 2, 30, 1.0),
        (1.0, 0.5, 30, 3.0),  # a lowered grant stretches the very next interval
        (29.5, 1, 30, 30.0),  # never past the deadline
        (4.0, 0, 30, 4.0),  # no pacing possible: at once
        (4.0, float("inf"), 30, 4.0),
    ],
)
def test_next_move_at(since: float, rate: float, deadline: float, expected: float) -> None:
    assert next_move_at(since, rate, deadline) == expected


@pytest.mark.parametrize(
    ("grant", "applied", "rate"),
    [
        (None, False, 50.0),  # no operator answered: the default stays
        (DrainGrant(125), True, 125.0),
        (DrainGrant(20, seq=7), True, 20.0),
    ],
)
def test_pace_takes_grants(grant: DrainGrant | None, applied: bool, rate: float) -> None:
    """Malformed grants never get here: `DrainGrant.decode` refuses them
    (tests/contract/test_messages.py)."""
    pace = DrainPace(50.0)
    assert pace.offer(grant) is applied
    assert pace.rate == rate


def test_pace_keeps_the_newest_word_whatever_order_it_arrives_in() -> None:
    """The grant (seq 1: 20/s) is handled after the re-pace that followed it (seq 2:
    10/s, because a second pod started draining): 10/s stays."""
    pace = DrainPace(100.0)
    assert pace.offer(DrainGrant(10, seq=2))
    assert not pace.offer(DrainGrant(20, seq=1))
    assert pace.rate == 10
    assert pace.offer(DrainGrant(20, seq=3))  # the other pod finished
    assert pace.offer(DrainGrant(5))  # no seq: always applies
    assert pace.rate == 5


def test_reconnect_jitter_is_bounded_and_spread() -> None:
    rng = random.Random(7)
    values = [reconnect_after_ms(1000, rng) for _ in range(500)]
    assert all(0 <= v <= 1000 for v in values)
    assert len(set(values)) > 300
    assert reconnect_after_ms(0, rng) == 0
