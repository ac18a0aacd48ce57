"""Full-jitter backoff: bounded by 0.5 s doubling to 20 s."""

from __future__ import annotations

import random

import pytest

from switchboard.client.backoff import full_jitter


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.5), (1, 1.0), (3, 4.0), (5, 16.0), (6, 20.0), (100, 20.0)]
)
def test_full_jitter_ceiling(attempt: int, ceiling: float) -> None:
    rng = random.Random(1)
    delays = [full_jitter(attempt, rng) for _ in range(2000)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.95  # the whole range is used: full jitter
