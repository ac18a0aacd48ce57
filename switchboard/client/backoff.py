"""Reconnect delays for clients (DESIGN §4): full jitter, 0.5 s doubling to 20 s, or
the edge's own hint when it gave one (`Retry-After`, or 1013 `retry after <ms>`)."""

from __future__ import annotations

import random
import re

BASE_S = 0.5
CAP_S = 20.0
# A hint is stretched by U(1, 1.5): clients refused together do not all come back
# together (a draining or full pod refuses many at once).
HINT_SPREAD = 1.5
_RETRY_AFTER_REASON = re.compile(r"retry after ([0-9]{1,9})")
_DELTA_SECONDS = re.compile(r"[0-9]{1,9}")


def full_jitter(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based): U(0, min(cap, base·2ⁿ))."""
    ceiling = min(CAP_S, BASE_S * (2 ** min(attempt, 16)))
    return (rng or random).uniform(0, ceiling)


def hinted_delay(hint_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait when the edge asked for `hint_s`: at least that, jittered up to
    half as much again, never over the backoff's cap."""
    return min(CAP_S, hint_s * (rng or random).uniform(1, HINT_SPREAD))


def retry_after_header(value: str | None) -> float | None:
    """Seconds from an HTTP `Retry-After` in delta-seconds (what the edge sends); None
    for anything else (absent, a date, garbage, zero or negative)."""
    if value is None or _DELTA_SECONDS.fullmatch(value.strip()) is None:
        return None
    seconds = int(value)
    return float(seconds) if seconds > 0 else None


def retry_after_reason(reason: str | None) -> float | None:
    """Seconds from a 1013 close reason `retry after <ms>`; None for any other reason."""
    match = _RETRY_AFTER_REASON.fullmatch((reason or "").strip())
    if match is None or int(match[1]) == 0:
        return None
    return int(match[1]) / 1000
