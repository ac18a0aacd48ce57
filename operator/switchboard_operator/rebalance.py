"""Rebalancing after a scale-up: which pods shed how many connections, and how fast.

WebSockets live long, so pods added by a scale-up stay nearly empty while the old
ones stay hot. When the busiest pod carries more than `1 + maxImbalance` times the
mean (and at least `MIN_EXCESS` connections more), each pod above that line is
asked to shed down to the mean (rounded up). The clients it moves come back
through the Service, and pods that shed (or just did) refuse clients moved by a
shed, so these land on the pods that are not shedding: the cold ones.

Nothing is decided while the pool is not settled: a pod not Ready yet or without
live stats (its count is unknown, not zero), a pod draining (drains keep the
whole reconnect budget), a shed still running or whose clients may still be
coming back (their counts are not settled anywhere), or a pool whose total is
still moving (a fleet filling up: each pod's stats are from a different moment of
the ramp, so their unevenness is not real). The sheds of one round
share the budget evenly, so together they never exceed it. Pure: no I/O, time
passed in.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from switchboard_operator.pacing import drain_shares

ASK_GRACE_S = 10.0  # an asked pod counts as shedding this long before its stats say so
# Not worth a move: a pod only sheds when it is this many connections above the mean
# (a fleet that is filling up is briefly uneven by a few connections).
MIN_EXCESS = 10
# A pool's total must have held within `steady_tolerance` this long before a shed:
# three of the edges' stats intervals (2 s), so every pod has reported since.
STEADY_S = 6.0


@dataclass(frozen=True, slots=True)
class Policy:
    enabled: bool
    max_imbalance: float  # the busiest pod may carry mean * (1 + this)
    budget_per_s: float  # reconnects per second for all sheds of the pool together
    min_excess: int = MIN_EXCESS  # connections above the mean before a pod sheds


@dataclass(frozen=True, slots=True)
class PodLoad:
    connections: int
    shedding: bool = False  # a shed runs there or just ran (stats, or asked recently)


@dataclass(frozen=True, slots=True)
class Plan:
    reason: str  # balanced, rebalance, disabled, drain-in-progress, settling, shedding, filling
    imbalance: float  # the busiest pod's connections over the mean, minus 1 (0: even)
    mean: float
    sheds: dict[str, int] = field(default_factory=dict)  # pod → connections to move
    rates: dict[str, float] = field(default_factory=dict)  # pod → its pace

    @property
    def moves(self) -> int:
        return sum(self.sheds.values())


def imbalance(connections: Collection[int]) -> tuple[float, float]:
    """(busiest / mean - 1, mean); (0, mean) for an empty or idle pool."""
    if not connections:
        return 0.0, 0.0
    mean = sum(connections) / len(connections)
    if mean <= 0:
        return 0.0, mean
    return max(connections) / mean - 1, mean


def steady_tolerance(total: int) -> int:
    """How far a pool's total may move and still count as steady: organic churn."""
    return max(MIN_EXCESS, round(total * 0.02))


def plan(
    pods: Mapping[str, PodLoad],
    expected: int,
    draining: int,
    policy: Policy,
    *,
    steady: bool = True,
) -> Plan:
    """The sheds to ask for now. `pods` are the pool's Ready, not terminating pods with
    live stats; `expected` is how many pods the Deployment wants (fewer in `pods`: a
    scale-up or rollout has not settled); `draining` counts the pool's draining pods;
    `steady`: the pool's total has held still (`ShedLedger.steady`)."""
    ratio, mean = imbalance([p.connections for p in pods.values()])
    ratio = round(ratio, 3)
    if not policy.enabled:
        return Plan("disabled", ratio, mean)
    if draining:
        return Plan("drain-in-progress", ratio, mean)
    if len(pods) < expected:
        return Plan("settling", ratio, mean)
    if any(p.shedding for p in pods.values()):
        return Plan("shedding", ratio, mean)
    busiest = max(p.connections for p in pods.values()) if pods else 0
    if len(pods) < 2 or ratio <= policy.max_imbalance or busiest - mean < policy.min_excess:
        return Plan("balanced", ratio, mean)
    if not steady:
        return Plan("filling", ratio, mean)
    line = max(mean * (1 + policy.max_imbalance), mean + policy.min_excess)
    target = math.ceil(mean)
    sheds = {
        name: p.connections - target
        for name, p in sorted(pods.items())
        if p.connections > line and p.connections > target
    }
    return Plan("rebalance", ratio, mean, sheds, drain_shares(policy.budget_per_s, sheds))


@dataclass(slots=True)
class ShedLedger:
    """Which pods of each pool were asked to shed and when: a pod counts as shedding
    from the ask until its stats say so (then as long as they do), or `grace_s`. Also
    since when each pool's total has held still."""

    grace_s: float = ASK_GRACE_S
    steady_s: float = STEADY_S
    rebalancing: set[str] = field(default_factory=set)  # pools with sheds since balanced
    _asked: dict[str, dict[str, float]] = field(default_factory=dict)  # pool → pod → when
    _totals: dict[str, tuple[int, float]] = field(default_factory=dict)  # pool → total, since

    def steady(self, pool: str, total: int, now: float) -> bool:
        """The pool's total has stayed within `steady_tolerance` of one value for
        `steady_s` (observed on every reconcile; the first observation starts the clock)."""
        seen = self._totals.get(pool)
        if seen is None or abs(total - seen[0]) > steady_tolerance(seen[0]):
            self._totals[pool] = (total, now)
            return self.steady_s <= 0
        return now - seen[1] >= self.steady_s

    def asked(self, pool: str, pods: Collection[str], now: float) -> None:
        self._asked.setdefault(pool, {}).update(dict.fromkeys(pods, now))

    def shedding(self, pool: str, reported: Collection[str], now: float) -> frozenset[str]:
        """Pods shedding now: those whose stats say so, and those asked recently whose
        stats do not say so yet (an ask is forgotten once its pod reports)."""
        asked = self._asked.get(pool, {})
        still = {
            pod: at for pod, at in asked.items() if pod not in reported and now - at < self.grace_s
        }
        self._asked[pool] = still
        return frozenset(reported) | frozenset(still)

    def take(self, pool: str) -> frozenset[str]:
        """Forget and return the pool's asked pods (a drain stops them)."""
        return frozenset(self._asked.pop(pool, {}))

    def forget(self, pool: str) -> None:
        self._asked.pop(pool, None)
        self._totals.pop(pool, None)
        self.rebalancing.discard(pool)
