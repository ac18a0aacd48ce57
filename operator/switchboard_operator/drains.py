"""Which pods are draining in each EdgePool, and the pace each should have.

Plain state fed observations (no I/O, time passed in). The EdgePool timer tells
it each pool's pods, budget and the pods whose stats say they drain; a drain
request from an edge adds that pod at once (its stats catch up within seconds).
Every change re-divides the pool's budget; a grant names the pods already
draining whose pace it lowered, and `rate_changes` lists the pods whose pace
must be re-sent after an observation. A pool not refreshed recently (this
operator replica was paused by peering, or the pool was deleted) answers
nothing, so edges fall back to their default rather than hear a stale grant.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from switchboard_operator.pacing import drain_shares

REQUEST_GRACE_S = 15.0  # a granted pod counts as draining this long before its stats say so


@dataclass(frozen=True, slots=True)
class Grant:
    rate: float  # the requesting pod's pace
    repaced: dict[str, float]  # other draining pods of its pool → their new pace


@dataclass(slots=True)
class _Pool:
    pods: frozenset[str]
    budget: float
    refreshed: float
    reported: frozenset[str] = frozenset()
    requested: dict[str, float] = field(default_factory=dict)  # pod → when it asked
    sent: dict[str, float] = field(default_factory=dict)  # pod → pace last told


class DrainLedger:
    def __init__(self, fresh_for_s: float) -> None:
        self._fresh_for_s = fresh_for_s
        self._pools: dict[str, _Pool] = {}

    def observe(
        self, pool: str, pods: Collection[str], budget: float, draining: Collection[str], now: float
    ) -> None:
        """The pool's current pods and which of them report draining."""
        state = self._pools.get(pool)
        if state is None:
            state = self._pools[pool] = _Pool(frozenset(pods), budget, now)
        state.pods, state.budget, state.refreshed = frozenset(pods), budget, now
        state.reported = frozenset(draining) & state.pods
        state.requested = {
            pod: at
            for pod, at in state.requested.items()
            if pod in state.pods and now - at < REQUEST_GRACE_S and pod not in state.reported
        }
        state.sent = {pod: r for pod, r in state.sent.items() if pod in self.draining(pool)}

    def forget(self, pool: str) -> None:
        self._pools.pop(pool, None)

    def pool_of(self, pod: str) -> tuple[str, frozenset[str]] | None:
        """The pool `pod` belongs to, and that pool's pods."""
        for name, state in self._pools.items():
            if pod in state.pods:
                return name, state.pods
        return None

    def draining(self, pool: str) -> frozenset[str]:
        state = self._pools.get(pool)
        if state is None:
            return frozenset()
        return state.reported | frozenset(state.requested)

    def grant(self, pod: str, now: float) -> Grant | None:
        """A drain request from `pod`: its share, and the new (smaller) shares of the
        pods already draining in its pool, to be sent before it starts so the pool
        never exceeds its budget. None if no fresh pool owns the pod."""
        for name, state in self._pools.items():
            if pod in state.pods and now - state.refreshed <= self._fresh_for_s:
                if pod not in state.reported:
                    state.requested[pod] = now
                shares = drain_shares(state.budget, self.draining(name))
                repaced = {p: r for p, r in shares.items() if p != pod and state.sent.get(p) != r}
                state.sent.update(repaced)
                state.sent[pod] = shares[pod]
                return Grant(shares[pod], repaced)
        return None

    def rate_changes(self, pool: str) -> dict[str, float]:
        """Draining pods whose fair share differs from what they were last told."""
        state = self._pools.get(pool)
        if state is None:
            return {}
        shares = drain_shares(state.budget, self.draining(pool))
        changes = {pod: r for pod, r in shares.items() if state.sent.get(pod) != r}
        state.sent.update(changes)
        return changes
