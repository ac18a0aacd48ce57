"""Pool loads → sheds (EdgePool rebalancing is a pure function, like scaling)."""

from __future__ import annotations

import pytest

from switchboard_operator.rebalance import PodLoad, Policy, ShedLedger, imbalance, plan

ON = Policy(enabled=True, max_imbalance=0.2, budget_per_s=30)


def loads(*counts: int, shedding: tuple[int, ...] = ()) -> dict[str, PodLoad]:
    return {f"p{i}": PodLoad(c, i in shedding) for i, c in enumerate(counts)}


@pytest.mark.parametrize(
    ("counts", "want"),
    [
        ((), (0.0, 0.0)),
        ((0, 0, 0), (0.0, 0.0)),
        ((50, 50), (0.0, 50.0)),
        ((100, 100, 100, 0, 0, 0), (1.0, 50.0)),
        ((90, 10), (0.8, 50.0)),
    ],
)
def test_imbalance_is_the_busiest_over_the_mean(
    counts: tuple[int, ...], want: tuple[float, float]
) -> None:
    assert imbalance(counts) == pytest.approx(want)


def test_a_pool_still_filling_is_left_alone() -> None:
    """A real rebalance plan is held back while the pool's total moves; a balanced
    pool is still reported balanced."""
    hot = loads(100, 100, 100, 0, 0, 0)
    assert plan(hot, 6, 0, ON, steady=False).reason == "filling"
    assert plan(hot, 6, 0, ON, steady=False).sheds == {}
    assert plan(loads(50, 50), 2, 0, ON, steady=False).reason == "balanced"
    assert plan(loads(100, 10, 0, shedding=(1,)), 3, 0, ON, steady=False).reason == "shedding"


@pytest.mark.parametrize(
    ("name", "observations", "want"),
    [
        # (time, total) seen on successive reconciles; steady_s = 6
        ("first look", [(0, 300)], False),
        ("held for 6 s", [(0, 300), (3, 300), (6, 300)], True),
        ("not yet 6 s", [(0, 300), (5.9, 300)], False),
        # A fleet filling up (300 clients connecting over 3 s): the clock restarts
        ("filling", [(0, 40), (1, 140), (2, 260), (3, 300), (8, 300)], False),
        ("filled, then held", [(0, 40), (1, 140), (2, 260), (3, 300), (9, 300)], True),
        # Organic churn within max(10, 2 %) does not restart the clock
        ("churn", [(0, 1000), (2, 1018), (4, 985), (6, 1010)], True),
        ("small pool churn", [(0, 30), (3, 39), (6, 21)], True),
        ("beyond the tolerance", [(0, 1000), (2, 1030), (6, 1030)], False),
        ("emptying", [(0, 300), (2, 200), (4, 100), (6, 100)], False),
    ],
)
def test_a_pool_is_steady_once_its_total_held_still(
    name: str, observations: list[tuple[float, int]], want: bool
) -> None:
    ledger = ShedLedger(steady_s=6)
    answers = [ledger.steady("ns/pool", total, now=at) for at, total in observations]
    assert answers[-1] is want, (name, answers)
    assert ledger.steady("other/pool", 300, now=100) is False  # each pool its own clock
    ledger.forget("ns/pool")
    assert ledger.steady("ns/pool", observations[-1][1], now=1000) is False


@pytest.mark.parametrize(
    ("name", "pods", "expected", "draining", "policy", "reason", "sheds"),
    [
        # The case: 3 hot pods, 3 new empty ones. Each hot one sheds to the mean.
        (
            "scale-up 3 → 6",
            loads(100, 100, 100, 0, 0, 0),
            6,
            0,
            ON,
            "rebalance",
            {"p0": 50, "p1": 50, "p2": 50},
        ),
        # Uneven pools: only pods above mean * 1.2 shed, each down to ceil(mean).
        (
            "only above the line",
            loads(130, 110, 60, 0),
            4,
            0,
            ON,
            "rebalance",
            {"p0": 55, "p1": 35},
        ),
        ("rounds the mean up", loads(70, 0, 0), 3, 0, ON, "rebalance", {"p0": 46}),
        # A few connections are not worth a move (a filling fleet is briefly uneven).
        ("below the minimum excess", loads(12, 0, 0), 3, 0, ON, "balanced", {}),
        (
            "the minimum excess is the line",
            loads(40, 24, 20, 0),
            4,
            0,
            ON,
            "rebalance",
            {"p0": 19},
        ),
        # Within bounds: nothing moves.
        ("balanced", loads(55, 50, 45), 3, 0, ON, "balanced", {}),
        ("exactly at the bound", loads(60, 40, 50), 3, 0, ON, "balanced", {}),
        ("one pod", loads(500), 1, 0, ON, "balanced", {}),
        ("idle", loads(0, 0, 0), 3, 0, ON, "balanced", {}),
        # Not settled: a new pod is not Ready (or has no stats) yet.
        ("settling", loads(100, 100, 0), 4, 0, ON, "settling", {}),
        # Drains keep the budget.
        ("drain in progress", loads(100, 0), 2, 1, ON, "drain-in-progress", {}),
        # A shed still running (or its clients on their way back): wait for its result.
        ("shedding", loads(100, 10, 0, shedding=(1,)), 3, 0, ON, "shedding", {}),
        (
            "disabled",
            loads(100, 0),
            2,
            0,
            Policy(enabled=False, max_imbalance=0.2, budget_per_s=30),
            "disabled",
            {},
        ),
        # A large tolerance leaves a moderate skew alone.
        (
            "tolerant",
            loads(150, 50),
            2,
            0,
            Policy(enabled=True, max_imbalance=1.0, budget_per_s=30),
            "balanced",
            {},
        ),
    ],
)
def test_plans(
    name: str,
    pods: dict[str, PodLoad],
    expected: int,
    draining: int,
    policy: Policy,
    reason: str,
    sheds: dict[str, int],
) -> None:
    decided = plan(pods, expected, draining, policy)
    assert (decided.reason, decided.sheds) == (reason, sheds), name
    assert decided.moves == sum(sheds.values())


@pytest.mark.parametrize("hot", range(1, 8))
def test_the_sheds_of_a_round_share_the_budget(hot: int) -> None:
    pods = loads(*([100] * hot), *([0] * hot))
    decided = plan(pods, 2 * hot, 0, ON)
    assert set(decided.rates) == set(decided.sheds) == {f"p{i}" for i in range(hot)}
    assert sum(decided.rates.values()) == pytest.approx(ON.budget_per_s)


def test_after_the_sheds_the_pool_is_within_bounds() -> None:
    """If the moved clients land on the pods that were not shedding (shedding pods
    refuse them), one round reaches the bound."""
    counts = {"a": 400, "b": 310, "c": 90, "d": 0, "e": 0}
    decided = plan({k: PodLoad(v) for k, v in counts.items()}, 5, 0, ON)
    after = {k: v - decided.sheds.get(k, 0) for k, v in counts.items()}
    receivers = [k for k in counts if k not in decided.sheds]
    for _ in range(decided.moves):
        emptiest = min(receivers, key=lambda k: after[k])  # spread: each takes its turn
        after[emptiest] += 1
    assert sum(after.values()) == sum(counts.values())
    ratio, _ = imbalance(list(after.values()))
    assert ratio <= ON.max_imbalance


def test_ledger_counts_an_asked_pod_until_its_stats_say_so() -> None:
    ledger = ShedLedger(grace_s=10)
    ledger.asked("ns/pool", ["a", "b"], now=0)
    assert ledger.shedding("ns/pool", [], now=1) == {"a", "b"}
    # a reports shedding: from now on its stats decide
    assert ledger.shedding("ns/pool", ["a"], now=2) == {"a", "b"}
    assert ledger.shedding("ns/pool", [], now=3) == {"b"}
    # b never reports (its edge was gone): forgotten after the grace
    assert ledger.shedding("ns/pool", [], now=11) == frozenset()
    ledger.asked("ns/pool", ["c"], now=20)
    assert ledger.take("ns/pool") == {"c"}
    assert ledger.shedding("ns/pool", [], now=21) == frozenset()
    assert ledger.shedding("other/pool", ["x"], now=21) == {"x"}
