"""Pure parts of the upgrade's refusals and credential checks: close codes and reasons,
the in-band choice, ticket shapes, time claims, resume audience, the drain secret file."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from edge.settings import load_edge_settings
from edge.upgrade import (
    MAX_CLOSE_REASON_BYTES,
    Refusal,
    is_ticket_shaped,
    new_ticket,
    refuse_in_band,
    truncate_utf8,
)
from switchboard.contract.localdrain import secret_path, write_secret
from switchboard.contract.resume import mint_resume, read_resume
from switchboard.contract.settings import SettingsError
from switchboard.contract.tokens import Claims, TokenError, TokenVerifier, mint_token

SECRET = "unit-secret-that-is-long-enough-for-hs256"


@pytest.mark.parametrize(
    ("refusal", "code", "reason", "headers"),
    [
        (Refusal(401, "token expired"), 4001, "token expired", {}),
        (Refusal(401, "missing credentials"), 4001, "missing credentials", {}),
        (Refusal(403, "revoked"), 4003, "revoked", {}),
        (Refusal(429, "too many", retry_after_s=1), 1013, "retry after 1000", {"Retry-After": "1"}),
        (
            Refusal(503, "edge is full", retry_after_s=5),
            1013,
            "retry after 5000",
            {"Retry-After": "5"},
        ),
    ],
)
def test_each_refusal_has_its_close_code_and_reason(
    refusal: Refusal, code: int, reason: str, headers: dict[str, str]
) -> None:
    assert (refusal.close_code, refusal.close_reason, refusal.headers) == (code, reason, headers)


def test_close_reasons_fit_a_close_frame_without_splitting_a_character() -> None:
    long = Refusal(401, "é" * 100)  # 200 bytes of UTF-8
    encoded = long.close_reason.encode()
    assert len(encoded) <= MAX_CLOSE_REASON_BYTES
    assert long.close_reason == "é" * 61  # 122 bytes: the 62nd would cross the limit
    assert truncate_utf8("short", 123) == "short"


@pytest.mark.parametrize(
    ("mode", "origin", "in_band"),
    [
        ("auto", "https://app.example", True),
        ("auto", None, False),
        ("always", None, True),
        ("always", "https://app.example", True),
        ("never", "https://app.example", False),
        ("never", None, False),
    ],
)
def test_in_band_choice(mode: Any, origin: str | None, in_band: bool) -> None:
    assert refuse_in_band(mode, origin) is in_band


def test_minted_tickets_have_the_checked_shape() -> None:
    assert all(is_ticket_shaped(new_ticket()) for _ in range(200))
    for bad in ("", "*", ">", "a b", "a.b", "x" * 31, "x" * 33, "A" * 31 + "\n", "é" * 32):
        assert not is_ticket_shaped(bad), bad


def test_in_band_setting_is_validated_by_name() -> None:
    with pytest.raises(SettingsError, match="SB_EDGE_IN_BAND_REFUSALS"):
        load_edge_settings(jwt_secret=SECRET, in_band_refusals="sometimes")
    assert load_edge_settings(jwt_secret=SECRET).in_band_refusals == "auto"


def forged(**claims: Any) -> str:
    return jwt.encode({"sub": "alice"} | claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("exp", "message"),
    [
        ("{future}", "claim 'exp' must be a number"),  # PyJWT alone accepts this one
        ("{past}", "token expired"),
        ("{future}.0", "invalid token"),
        (True, "token expired"),  # JSON true is no time either
        (None, "token lacks claim 'exp'"),
    ],
)
def test_exp_must_be_a_number(exp: object, message: str) -> None:
    now = int(time.time())
    if isinstance(exp, str):
        exp = exp.format(future=now + 600, past=now - 600)
    with pytest.raises(TokenError, match=message):
        TokenVerifier(secret=SECRET).verify(forged(exp=exp))
    assert TokenVerifier(secret=SECRET).verify(forged(exp=now + 600)).sub == "alice"


@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_nbf_and_iat_must_be_numbers(name: str) -> None:
    verifier = TokenVerifier(secret=SECRET)
    future = int(time.time()) + 600
    assert verifier.verify(forged(exp=future, **{name: 0})).sub == "alice"
    with pytest.raises(TokenError, match=f"claim '{name}' must be a number"):
        verifier.verify(forged(exp=future, **{name: "0"}))
    with pytest.raises(TokenError, match=f"claim '{name}' must be a number"):
        verifier.verify(forged(exp=future, **{name: False}))


def test_a_resume_token_is_no_bearer_token_whatever_the_audience_setting() -> None:
    resume = mint_resume(SECRET, Claims("alice", time.time() + 600), [], ttl_s=60)
    with pytest.raises(TokenError, match=r"accepted only as \?resume="):
        TokenVerifier(secret=SECRET).verify(resume)
    with pytest.raises(TokenError, match="another audience"):
        TokenVerifier(secret=SECRET, audience="app").verify(resume)
    listed = forged(exp=int(time.time()) + 600, aud=["app", "switchboard-resume"])
    with pytest.raises(TokenError, match=r"accepted only as \?resume="):
        TokenVerifier(secret=SECRET).verify(listed)
    claims, subs = read_resume(SECRET, resume)  # where it belongs, it works
    assert (claims.sub, subs) == ("alice", [])


def test_a_bearer_token_is_no_resume_token() -> None:
    with pytest.raises(TokenError, match="invalid resume token"):
        read_resume(SECRET, mint_token(SECRET, "alice"))


def test_resume_time_claims_must_be_numbers() -> None:
    future = time.time() + 600
    body = {"sub": "alice", "aud": "switchboard-resume", "exp": int(future), "subs": []}
    token = jwt.encode(body | {"token_exp": str(future)}, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match="claim 'token_exp' must be a number"):
        read_resume(SECRET, token)


def test_drain_secret_file_is_private_and_replaces_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep me")
    path = tmp_path / "edge.drain"
    os.symlink(target, path)
    secret = write_secret(path)
    assert not path.is_symlink()
    assert path.read_text() == secret
    assert len(secret) >= 43  # 32 random bytes
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert target.read_text() == "keep me"
    assert write_secret(path) != secret  # a fresh one per start


def test_drain_secret_path_default_is_per_port() -> None:
    assert secret_path(8080) != secret_path(8081)
    assert secret_path(8080, Path("/run/x")) == Path("/run/x")
