"""Full-jitter backoff: bounded by 0.5 s doubling to 20 s; the edge's hints, read strictly."""

from __future__ import annotations

import random

import pytest

from switchboard.client.backoff import (
    CAP_S,
    full_jitter,
    hinted_delay,
    retry_after_header,
    retry_after_reason,
)


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.5), (1, 1.0), (3, 4.0), (5, 16.0), (6, 20.0), (100, 20.0)]
)
def test_full_jitter_ceiling(attempt: int, ceiling: float) -> None:
    rng = random.Random(1)
    delays = [full_jitter(attempt, rng) for _ in range(2000)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.95  # the whole range is used: full jitter


def test_a_hint_is_waited_at_least_and_spread_up_to_half_again() -> None:
    rng = random.Random(1)
    delays = [hinted_delay(2.0, rng) for _ in range(2000)]
    assert all(2.0 <= d <= 3.0 for d in delays)
    assert min(delays) < 2.05 and max(delays) > 2.95  # spread: the fleet does not return at once
    assert hinted_delay(60.0, rng) == CAP_S  # never over the backoff's cap


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        (" 5 ", 5.0),
        (None, None),
        ("", None),
        ("0", None),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("²", None),  # a digit to str.isdigit, not to int()
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),  # a date: the edge never sends one
        ("9" * 12, None),
    ],
)
def test_retry_after_header(value: str | None, seconds: float | None) -> None:
    assert retry_after_header(value) == seconds


@pytest.mark.parametrize(
    ("reason", "seconds"),
    [
        ("retry after 1000", 1.0),
        ("retry after 5000", 5.0),
        ("retry after 250", 0.25),
        ("retry after 0", None),
        ("retry after -5", None),
        ("retry after soon", None),
        ("slow consumer", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reason(reason: str | None, seconds: float | None) -> None:
    assert retry_after_reason(reason) == seconds
