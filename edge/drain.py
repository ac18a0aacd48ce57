"""Drain pacing: pure decisions about when each connection is told to move.

A draining edge sends `reconnect` and closes with 1001 one connection at a time
at `rate` per second (granted by the operator, who may lower it while the drain
runs, or the configured default), so a fleet-wide rollout never turns into a
reconnect storm. Whatever is left at the deadline goes at once.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from switchboard.contract.messages import DrainGrant, ShedCommand


def next_move_at(since: float, rate_per_s: float, deadline: float) -> float:
    """When the next connection is moved: one interval at the current rate after
    `since` (the drain's start, then each move), the deadline at the latest.

    Starting one interval in, not at once, means a pod that starts draining while
    others already spent the pool's budget in the last second does not add a
    burst; reading the rate at every step means a lowered grant applies at once.
    """
    if rate_per_s <= 0 or math.isinf(rate_per_s):
        return since  # no pace: all at once
    return min(since + 1.0 / rate_per_s, deadline)


def reconnect_after_ms(jitter_ms: int, rng: random.Random | None = None) -> int:
    """Full jitter, so clients told at the same moment do not return together."""
    return (rng or random).randint(0, jitter_ms) if jitter_ms > 0 else 0


@dataclass(slots=True)
class DrainPace:
    """This edge's drain pace: the configured default until the operator speaks,
    then the newest word from it.

    The operator's answer to the drain request and a later re-pace on the control
    subject travel on different subscriptions and can be handled in either order;
    both carry `seq` (increasing in the operator), and an older one never
    overrides a newer one. A message without `seq` always applies.
    """

    rate: float
    seq: int = -1

    def offer(self, grant: DrainGrant | ShedCommand | None) -> bool:
        """Take a grant, re-pace or shed (already validated: a positive rate) unless
        stale."""
        if grant is None:
            return False
        if grant.seq is not None:
            if grant.seq < self.seq:
                return False
            self.seq = grant.seq
        self.rate = grant.reconnects_per_second
        return True
