"""The SDK's exceptions sit in the one hierarchy: `except SwitchboardException` catches
an error frame, a close and a stop alike."""

from __future__ import annotations

import pytest

from switchboard.client import Closed, Stopped, SwitchboardError
from switchboard.contract.errors import SwitchboardException


@pytest.mark.parametrize(
    "error",
    [SwitchboardError("forbidden", "not allowed", False), Closed(1013, "busy"), Stopped(4003, "x")],
)
def test_the_clients_errors_are_switchboard_exceptions(error: Exception) -> None:
    with pytest.raises(SwitchboardException):
        raise error


def test_an_error_frame_keeps_its_fields() -> None:
    error = SwitchboardError("rate_limited", "slow down", True)
    assert (error.code, error.message, error.retryable) == ("rate_limited", "slow down", True)
    assert str(error) == "rate_limited: slow down"
