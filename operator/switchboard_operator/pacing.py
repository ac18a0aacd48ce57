"""Drain pacing and pod-deletion costs: pure decisions.

A rollout drains several pods at once; each asks `sb.operator.drain` for a pace.
The fleet-wide budget (EdgePool `drain.reconnectsPerSecond`) is split evenly
among the pods draining at that moment, and split again when one starts or
finishes, so the sum never exceeds the budget and clients never storm.

`controller.kubernetes.io/pod-deletion-cost` makes the ReplicaSet controller
delete the cheapest pods first; keeping it equal to each pod's connection count
means a scale-down moves the fewest clients. Patches are limited to meaningful
changes, and to one per pod per interval, so a busy fleet does not flood the API.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def drain_shares(budget_per_s: float, draining: Collection[str]) -> dict[str, float]:
    """Each draining pod's pace: an even share of the budget."""
    if not draining:
        return {}
    share = budget_per_s / len(draining)
    return dict.fromkeys(sorted(draining), share)


@dataclass(frozen=True, slots=True)
class CostPolicy:
    min_change: int
    min_change_ratio: float
    min_interval_s: float


def deletion_cost_patches(
    now: float,
    current: Mapping[str, int | None],
    connections: Mapping[str, int],
    last_patched: Mapping[str, float],
    policy: CostPolicy,
) -> dict[str, int]:
    """Pod → new cost, for pods whose cost should be patched now.

    `current` is each pod's annotation (None: unset or unreadable); a pod with no
    live stats is left alone, since its count is unknown rather than zero.
    """
    patches: dict[str, int] = {}
    for pod, cost in current.items():
        if pod not in connections:
            continue
        want = connections[pod]
        if cost == want:
            continue
        if cost is not None:
            if now - last_patched.get(pod, float("-inf")) < policy.min_interval_s:
                continue
            delta = abs(want - cost)
            threshold = max(policy.min_change, policy.min_change_ratio * abs(cost))
            if delta < threshold and want != 0:
                continue
        patches[pod] = want
    return patches


def parse_cost(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None
