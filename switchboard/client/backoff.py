"""Reconnect delays for clients (DESIGN §4): full jitter, 0.5 s doubling to 20 s."""

from __future__ import annotations

import random

BASE_S = 0.5
CAP_S = 20.0


def full_jitter(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based): U(0, min(cap, base·2ⁿ))."""
    ceiling = min(CAP_S, BASE_S * (2 ** min(attempt, 16)))
    return (rng or random).uniform(0, ceiling)
