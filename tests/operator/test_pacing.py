"""Drain budget division and deletion-cost patch decisions (pure functions)."""

from __future__ import annotations

import pytest

from switchboard_operator.pacing import CostPolicy, deletion_cost_patches, drain_shares, parse_cost


@pytest.mark.parametrize(
    ("budget", "pods", "want"),
    [
        (500, [], {}),
        (500, ["a"], {"a": 500}),
        (500, ["a", "b"], {"a": 250, "b": 250}),
        (500, ["a", "b", "c", "d"], {"a": 125, "b": 125, "c": 125, "d": 125}),
        (10, ["a", "b", "c"], {"a": 10 / 3, "b": 10 / 3, "c": 10 / 3}),
    ],
)
def test_budget_is_split_evenly(budget: float, pods: list[str], want: dict[str, float]) -> None:
    shares = drain_shares(budget, pods)
    assert shares == pytest.approx(want)
    assert sum(shares.values()) <= budget + 1e-9


@pytest.mark.parametrize("n", range(1, 21))
def test_sum_never_exceeds_budget(n: int) -> None:
    pods = [f"edge-{i}" for i in range(n)]
    assert sum(drain_shares(333, pods).values()) == pytest.approx(333)


POLICY = CostPolicy(min_change=10, min_change_ratio=0.1, min_interval_s=10)


@pytest.mark.parametrize(
    ("name", "current", "connections", "last", "want"),
    [
        ("first time", {"a": None, "b": None}, {"a": 900, "b": 20}, {}, {"a": 900, "b": 20}),
        ("unchanged", {"a": 900}, {"a": 900}, {"a": 0.0}, {}),
        ("small change skipped", {"a": 900}, {"a": 950}, {"a": 0.0}, {}),
        ("big change patched", {"a": 900}, {"a": 700}, {"a": 0.0}, {"a": 700}),
        ("below absolute floor", {"a": 20}, {"a": 25}, {"a": 0.0}, {}),
        ("emptied pod always patched", {"a": 5}, {"a": 0}, {"a": 0.0}, {"a": 0}),
        ("rate limited", {"a": 900}, {"a": 100}, {"a": 95.0}, {}),
        ("no stats: unknown, not zero", {"a": 900, "b": None}, {"b": 3}, {}, {"b": 3}),
        ("garbage annotation replaced", {"a": None}, {"a": 7}, {"a": 99.0}, {"a": 7}),
    ],
)
def test_deletion_cost_patches(
    name: str,
    current: dict[str, int | None],
    connections: dict[str, int],
    last: dict[str, float],
    want: dict[str, int],
) -> None:
    assert deletion_cost_patches(100.0, current, connections, last, POLICY) == want, name


@pytest.mark.parametrize(("raw", "want"), [("900", 900), ("-3", -3), ("x", None), (None, None)])
def test_parse_cost(raw: object, want: int | None) -> None:
    assert parse_cost(raw) == want
