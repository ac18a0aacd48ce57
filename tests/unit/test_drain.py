"""Drain pacing decisions, table-driven."""

from __future__ import annotations

import random
from typing import Any

import pytest

from edge.drain import drain_offsets, granted_rate, reconnect_after_ms


@pytest.mark.parametrize(
    ("connections", "rate", "timeout", "expected"),
    [
        (0, 100, 30, []),
        (3, 2, 30, [0.0, 0.5, 1.0]),
        (5, 1, 2.5, [0.0, 1.0, 2.0, 2.5, 2.5]),  # the rest go at the deadline
        (2, 0, 30, [0.0, 0.0]),  # no pacing possible: all at once
    ],
)
def test_drain_offsets(
    connections: int, rate: float, timeout: float, expected: list[float]
) -> None:
    assert drain_offsets(connections, rate, timeout) == expected


@pytest.mark.parametrize(
    ("reply", "rate"),
    [
        (None, 50.0),
        ({}, 50.0),
        ({"reconnects_per_second": 125}, 125.0),
        ({"reconnects_per_second": 0}, 50.0),
        ({"reconnects_per_second": -3}, 50.0),
        ({"reconnects_per_second": "fast"}, 50.0),
        ({"reconnects_per_second": True}, 50.0),
    ],
)
def test_granted_rate(reply: dict[str, Any] | None, rate: float) -> None:
    assert granted_rate(reply, 50.0) == rate


def test_reconnect_jitter_is_bounded_and_spread() -> None:
    rng = random.Random(7)
    values = [reconnect_after_ms(1000, rng) for _ in range(500)]
    assert all(0 <= v <= 1000 for v in values)
    assert len(set(values)) > 300
    assert reconnect_after_ms(0, rng) == 0
