"""Channel names, subjects, stream epochs, claim patterns, tokens and settings errors."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.settings import load_edge_settings
from switchboard.contract.channels import (
    channel_subject,
    is_valid_channel,
    is_valid_user_id,
    matches_any,
)
from switchboard.contract.codes import CloseCode, ReconnectAdvice, close_advice
from switchboard.contract.names import stream_epoch
from switchboard.contract.settings import SettingsError
from switchboard.contract.tokens import TokenError, TokenVerifier, mint_token


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("chat", True),
        ("chat:lobby", True),
        ("a_b-c:1:2", True),
        ("", False),
        ("a.b", False),
        ("a:", False),
        (":a", False),
        ("a::b", False),
        ("a b", False),
        ("*", False),
        (">", False),
        ("é", False),
        ("x" * 201, False),
    ],
)
def test_channel_names(name: str, valid: bool) -> None:
    assert is_valid_channel(name) is valid


def test_subject_mapping() -> None:
    assert channel_subject("sb", "chat:lobby") == "sb.ch.chat.lobby"


def test_claim_patterns() -> None:
    assert matches_any("chat:lobby", ["chat:*"])
    assert not matches_any("chatter", ["chat:*"])


@pytest.mark.parametrize(
    ("user", "valid"), [("alice", True), ("a@b", True), ("a.b", False), ("a*", False), ("", False)]
)
def test_user_ids_are_subject_tokens(user: str, valid: bool) -> None:
    assert is_valid_user_id(user) is valid


def test_close_advice_table() -> None:
    assert close_advice(CloseCode.GOING_AWAY) is ReconnectAdvice.AFTER_MS
    assert close_advice(CloseCode.FORBIDDEN) is ReconnectAdvice.NEVER
    assert close_advice(CloseCode.TOKEN_EXPIRED) is ReconnectAdvice.NEW_TOKEN
    assert close_advice(4999) is ReconnectAdvice.BACKOFF


def test_hs256_round_trip_and_refusals() -> None:
    verifier = TokenVerifier(secret="s" * 32)
    claims = verifier.verify(mint_token("s" * 32, "bob", roles=["member"], channels=["c:*"]))
    assert (claims.sub, claims.roles, claims.channels, claims.publish) == (
        "bob",
        ("member",),
        ("c:*",),
        None,
    )
    with pytest.raises(TokenError, match="token expired"):
        verifier.verify(mint_token("s" * 32, "bob", ttl_s=-60))
    with pytest.raises(TokenError, match="invalid token"):
        verifier.verify(mint_token("other-secret-" * 3, "bob"))
    with pytest.raises(TokenError, match="invalid token"):
        verifier.verify("garbage")
    no_exp = jwt.encode({"sub": "bob"}, "s" * 32, algorithm="HS256")
    with pytest.raises(TokenError, match="lacks claim 'exp'"):
        verifier.verify(no_exp)
    with pytest.raises(TokenError, match="claim 'sub'"):
        verifier.verify(mint_token("s" * 32, "bob.smith"))
    bad_roles = jwt.encode({"sub": "b", "exp": time.time() + 9, "roles": "admin"}, "s" * 32)
    with pytest.raises(TokenError, match="'roles' must be a list"):
        verifier.verify(bad_roles)


def test_alg_none_is_refused() -> None:
    unsigned = jwt.encode({"sub": "b", "exp": time.time() + 60}, "", algorithm="none")
    with pytest.raises(TokenError, match="invalid token"):
        TokenVerifier(secret="s" * 32).verify(unsigned)


def test_es256_public_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    verifier = TokenVerifier(public_key_file=tmp_path / "pub.pem")
    good = jwt.encode({"sub": "carol", "exp": time.time() + 60}, key, algorithm="ES256")
    assert verifier.verify(good).sub == "carol"
    # an HS256 token signed with the public key text must not pass (algorithm confusion)
    with pytest.raises(TokenError):
        verifier.verify(mint_token("s" * 40, "carol"))


def test_settings_errors_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="SB_EDGE_JWT_SECRET"):
        load_edge_settings()
    monkeypatch.setenv("SB_EDGE_RATE_PER_S", "fast")
    with pytest.raises(SettingsError, match="SB_EDGE_RATE_PER_S: Input should be a valid number"):
        load_edge_settings(jwt_secret="x")
    monkeypatch.setenv("SB_EDGE_RATE_PER_S", "50")
    monkeypatch.setenv("SB_EDGE_DEFAULT_CHANNEL", '{"client_publish": false}')
    settings = load_edge_settings(jwt_secret="x")
    assert settings.rate_per_s == 50
    assert not settings.default_channel.client_publish


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("0", "greater than 0"),
        ("-1", "greater than 0"),
        ("301", "less than or equal to 300"),
        ("soon", "a valid number"),
    ],
)
def test_channels_snapshot_timeout_is_bounded(
    monkeypatch: pytest.MonkeyPatch, value: str, error: str
) -> None:
    monkeypatch.setenv("SB_EDGE_CHANNELS_SNAPSHOT_TIMEOUT_S", value)
    with pytest.raises(SettingsError, match=f"SB_EDGE_CHANNELS_SNAPSHOT_TIMEOUT_S: .*{error}"):
        load_edge_settings(jwt_secret="x")
    monkeypatch.setenv("SB_EDGE_CHANNELS_SNAPSHOT_TIMEOUT_S", "0.5")
    assert load_edge_settings(jwt_secret="x").channels_snapshot_timeout_s == 0.5
    monkeypatch.delenv("SB_EDGE_CHANNELS_SNAPSHOT_TIMEOUT_S")
    assert load_edge_settings(jwt_secret="x").channels_snapshot_timeout_s == 5.0


def test_audience_and_issuer() -> None:
    secret = "s" * 32
    with_aud = jwt.encode(
        {"sub": "b", "exp": time.time() + 60, "aud": "chat", "iss": "idp"}, secret
    )
    assert TokenVerifier(secret=secret).verify(with_aud).sub == "b"  # aud not configured
    assert TokenVerifier(secret=secret, audience="chat", issuer="idp").verify(with_aud).sub == "b"
    with pytest.raises(TokenError, match="another audience"):
        TokenVerifier(secret=secret, audience="billing").verify(with_aud)
    with pytest.raises(TokenError, match="another issuer"):
        TokenVerifier(secret=secret, issuer="evil").verify(with_aud)


def test_verified_tokens_are_cached_but_still_expire() -> None:
    secret = "s" * 32
    verifier = TokenVerifier(secret=secret, leeway_s=0, cache_size=2)
    now = time.time()
    token = mint_token(secret, "bob", ttl_s=60, now=now)
    assert verifier.verify(token, now=now).sub == "bob"
    assert verifier.verify(token, now=now + 30).sub == "bob"  # from the cache
    with pytest.raises(TokenError, match="token expired"):
        verifier.verify(token, now=now + 61)  # a cached token expires all the same
    others = [mint_token(secret, f"u{i}", ttl_s=60) for i in range(3)]
    for other in others:
        verifier.verify(other)
    assert len(verifier._verified) == 2  # bounded
    with pytest.raises(TokenError, match="invalid token"):
        verifier.verify(token[:-2] + "xx")  # a forged variant is never a cache hit


def test_a_streams_epoch_is_its_creation_time() -> None:
    created = datetime(2026, 11, 30, 4, 11, 44, 123456, tzinfo=UTC)
    assert stream_epoch(created, "SB_CH_chat") == "2026-11-30T04:11:44.123456+00:00"
    recreated = datetime(2026, 11, 30, 4, 12, 0, tzinfo=UTC)
    assert stream_epoch(recreated, "SB_CH_chat") != stream_epoch(created, "SB_CH_chat")
    # a server that reports no creation time: the name, never the text "None"
    assert stream_epoch(None, "SB_CH_chat") == "SB_CH_chat"
