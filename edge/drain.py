"""Drain pacing: pure decisions about when each connection is told to move.

A draining edge sends `reconnect` and closes with 1001 one connection at a time
at `rate` per second (granted by the operator, or the configured default), so a
fleet-wide rollout never turns into a reconnect storm. Whatever is left at the
deadline goes at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any


def drain_offsets(connections: int, rate_per_s: float, timeout_s: float) -> list[float]:
    """Seconds after the drain starts at which each connection is closed."""
    if rate_per_s <= 0 or math.isinf(rate_per_s):
        return [0.0] * connections
    return [min(i / rate_per_s, timeout_s) for i in range(connections)]


def reconnect_after_ms(jitter_ms: int, rng: random.Random | None = None) -> int:
    """Full jitter, so clients told at the same moment do not return together."""
    return (rng or random).randint(0, jitter_ms) if jitter_ms > 0 else 0


def granted_rate(reply: Mapping[str, Any] | None, default: float) -> float:
    """The operator's grant from its `sb.operator.drain` reply, else the default."""
    if reply is None:
        return default
    rate = reply.get("reconnects_per_second")
    if isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0:
        return float(rate)
    return default
