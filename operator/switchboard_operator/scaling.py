"""How many edge pods an EdgePool wants: a pure decision, fed observations.

Replicas follow connections, not CPU: `ceil(connections / target)`, clamped to
[min, max]. Up at once, because a full pod refuses upgrades; down only to the
highest recommendation seen over the stabilization window (as the HPA does), so
a dip does not bounce clients twice, and never while a drain is running, since
draining pods' clients are on their way to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Limits:
    min_replicas: int
    max_replicas: int
    target_per_pod: int
    stabilization_s: float


@dataclass(frozen=True, slots=True)
class History:
    """Recommendations (time, replicas) inside the window, and when observing began."""

    since: float
    recommendations: tuple[tuple[float, int], ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason: str
    history: History

    def changes(self, current: int) -> bool:
        return self.replicas != current


def recommended(connections: int, limits: Limits) -> int:
    want = math.ceil(max(connections, 0) / limits.target_per_pod)
    return min(max(want, limits.min_replicas), limits.max_replicas)


def decide(
    now: float,
    connections: int,
    current: int,
    limits: Limits,
    history: History | None,
    draining: int,
) -> Decision:
    """The replicas to set now, why, and the history to pass next time."""
    raw = recommended(connections, limits)
    previous = history or History(since=now)
    window_start = now - limits.stabilization_s
    kept = tuple((t, r) for t, r in previous.recommendations if t >= window_start)
    new_history = History(since=previous.since, recommendations=(*kept, (now, raw)))

    if current < limits.min_replicas or raw > current:
        return Decision(max(raw, limits.min_replicas), "scale-up", new_history)
    if current > limits.max_replicas:
        return Decision(limits.max_replicas, "above-max", new_history)
    if raw == current:
        return Decision(current, "steady", new_history)
    # raw < current: a scale-down candidate.
    if draining:
        return Decision(current, "drain-in-progress", new_history)
    if now - previous.since < limits.stabilization_s:
        return Decision(current, "stabilizing", new_history)
    stable = max(r for _, r in new_history.recommendations)
    if stable >= current:
        return Decision(current, "stabilizing", new_history)
    return Decision(stable, "scale-down", new_history)
