"""One exception hierarchy: what callers catch, and the old homes still name the same
classes (no second `TokenError` or `SettingsError` can appear)."""

from __future__ import annotations

import pytest
from pydantic_settings import BaseSettings

from switchboard.contract import channel_config, errors, settings, tokens
from switchboard.contract.codes import ErrorCode
from switchboard.contract.errors import (
    InvalidInput,
    ManifestError,
    MessageError,
    NoResponders,
    ProtocolError,
    ReplicasRefused,
    RequestTimeout,
    SettingsError,
    SwitchboardException,
    TokenError,
    Unavailable,
)


@pytest.mark.parametrize(
    ("error", "parents"),
    [
        (SettingsError, (InvalidInput, ValueError)),
        (ManifestError, (InvalidInput, ValueError)),
        (MessageError, (InvalidInput, ValueError)),
        (TokenError, ()),
        (ProtocolError, ()),
        (Unavailable, ()),
        (ReplicasRefused, (Unavailable,)),
        (NoResponders, ()),
        (RequestTimeout, ()),
    ],
)
def test_every_error_is_a_switchboard_exception(
    error: type[Exception], parents: tuple[type[Exception], ...]
) -> None:
    assert issubclass(error, SwitchboardException)
    for parent in parents:
        assert issubclass(error, parent)


def test_what_is_not_input_is_no_value_error() -> None:
    """`except ValueError` around parsing must not swallow a refused token or NATS loss."""
    for error in (TokenError, Unavailable, NoResponders, RequestTimeout, ProtocolError):
        assert not issubclass(error, ValueError)


def test_the_modules_that_raise_them_name_the_same_classes() -> None:
    assert tokens.TokenError is errors.TokenError
    assert settings.SettingsError is errors.SettingsError
    assert channel_config.ManifestError is errors.ManifestError


def test_a_settings_error_comes_from_loading_settings() -> None:
    with pytest.raises(SwitchboardException, match="SB_TEST_PORT"):
        settings.load_settings(_Ports, "SB_TEST_", {"port": "many"})


def test_a_protocol_error_carries_its_code_and_request() -> None:
    error = ProtocolError(ErrorCode.BAD_REQUEST, "missing field 'channel'", "7")
    assert (error.code, error.message, error.request_id) == (
        ErrorCode.BAD_REQUEST,
        "missing field 'channel'",
        "7",
    )
    assert str(error) == "missing field 'channel'"


class _Ports(BaseSettings):
    port: int = 0
