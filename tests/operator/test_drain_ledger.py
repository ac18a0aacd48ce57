"""The drain ledger: who drains in each pool and the pace each is told."""

from __future__ import annotations

import pytest

from switchboard_operator.drains import REQUEST_GRACE_S, DrainLedger, Grant

PODS = ["a", "b", "c", "d"]


def ledger(budget: float = 100, draining: tuple[str, ...] = ()) -> DrainLedger:
    book = DrainLedger(fresh_for_s=5)
    book.observe("ns/pool", PODS, budget, draining, now=0)
    return book


def test_requests_split_the_budget_as_they_arrive() -> None:
    """A new drain slows the running ones in the same answer: the sum never exceeds it."""
    book = ledger(budget=120)
    assert book.grant("a", 1) == Grant(120, {})
    assert book.grant("b", 1) == Grant(60, {"a": 60})
    assert book.grant("c", 1) == Grant(40, {"a": 40, "b": 40})
    assert book.rate_changes("ns/pool") == {}  # already told


def test_a_repeated_request_repaces_nobody() -> None:
    book = ledger()
    book.grant("a", 1)
    book.grant("b", 1)
    assert book.grant("b", 1.5) == Grant(50, {})


def test_a_finished_pod_returns_its_share() -> None:
    book = ledger()
    book.grant("a", 1)
    book.grant("b", 1)
    book.rate_changes("ns/pool")
    book.observe("ns/pool", ["b", "c", "d"], 100, ["b"], now=2)  # "a" is gone
    assert book.rate_changes("ns/pool") == {"b": 100}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_pods_reported_draining_without_asking_are_paced_too(n: int) -> None:
    """An edge that got no answer (e.g. the operator restarted) drains at its default;
    the next observation tells it its share."""
    book = ledger(budget=120, draining=tuple(PODS[:n]))
    changes = book.rate_changes("ns/pool")
    assert changes == dict.fromkeys(PODS[:n], 120 / n)
    assert sum(changes.values()) == pytest.approx(120)


def test_unknown_pod_or_stale_pool_gets_no_answer() -> None:
    book = ledger()
    assert book.grant("zz", 1) is None  # not in any pool
    assert book.grant("a", 6) is None  # the pool was not refreshed for 6 s > 5 s


def test_a_request_counts_until_stats_catch_up_then_expires() -> None:
    book = ledger()
    book.grant("a", 1)
    book.observe("ns/pool", PODS, 100, [], now=2)
    assert book.draining("ns/pool") == {"a"}
    book.observe("ns/pool", PODS, 100, [], now=1 + REQUEST_GRACE_S + 0.1)
    assert book.draining("ns/pool") == frozenset()


def test_forget_drops_the_pool() -> None:
    book = ledger()
    book.forget("ns/pool")
    assert book.grant("a", 1) is None
    assert book.rate_changes("ns/pool") == {}
