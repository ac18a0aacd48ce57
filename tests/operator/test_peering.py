"""The operator's kopf peering priority: fixed when configured, else each replica its own."""

from __future__ import annotations

import random

import pytest

from switchboard_operator.main import kopf_settings, peering_priority
from switchboard_operator.settings import PEERING_PRIORITY_MAX, OperatorSettings


def test_a_configured_priority_is_used() -> None:
    settings = OperatorSettings(peering_priority=7)
    assert peering_priority(settings) == 7
    assert kopf_settings(settings).peering.priority == 7


def test_replicas_with_the_same_settings_draw_different_priorities() -> None:
    settings = OperatorSettings()
    rng = random.Random(1)
    drawn = [peering_priority(settings, rng) for _ in range(1000)]
    assert len(set(drawn)) == len(drawn)  # kopf would pause both on a tie
    assert all(1 <= p <= PEERING_PRIORITY_MAX for p in drawn)
    assert kopf_settings(settings).peering.priority != kopf_settings(settings).peering.priority


@pytest.mark.parametrize("value", [-1, PEERING_PRIORITY_MAX + 1])
def test_an_out_of_range_priority_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match="peering_priority"):
        OperatorSettings(peering_priority=value)
