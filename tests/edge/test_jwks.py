"""JWKS keys in process: which keys count, verification by `kid`, the rate limit.

The fetch is a function handed in (no HTTP server here);
tests/integration/test_jwks.py runs a real edge against a real one.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from edge.jwks import JwksError, JwksKeys, parse_key_set
from edge.settings import load_edge_settings
from switchboard.contract.settings import SettingsError
from switchboard.contract.tokens import TokenError, TokenVerifier

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())


def jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else ECAlgorithm
    entry: dict[str, Any] = algorithm.to_jwk(private.public_key(), as_dict=True)
    return entry | {"kid": kid} | extra


def token(private: Any, kid: str | None, algorithm: str, sub: str = "alice") -> str:
    headers = {} if kid is None else {"kid": kid}
    claims = {"sub": sub, "exp": int(time.time()) + 600}
    return jwt.encode(claims, private, algorithm=algorithm, headers=headers)


def key_set(*keys: object) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


class Fake:
    """Stands in for the IdP's URL and the clock."""

    def __init__(self, body: bytes) -> None:
        self.body: bytes | None = body
        self.calls = 0
        self.now = 1000.0

    def fetch(self, url: str, timeout_s: float) -> bytes:
        self.calls += 1
        if self.body is None:
            raise OSError("connection refused")
        return self.body

    def keys(self, **kwargs: Any) -> JwksKeys:
        return JwksKeys(
            "https://idp.example/jwks.json",
            fetch=self.fetch,
            clock=lambda: self.now,
            **kwargs,
        )


def test_only_signing_keys_for_accepted_algorithms_count() -> None:
    body = key_set(
        jwk(RSA_KEY, "rsa"),
        jwk(EC_KEY, "ec"),
        jwk(EC384_KEY, "p384"),  # ES384: not an accepted algorithm
        jwk(RSA_KEY, "enc", use="enc"),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # a shared secret: never
        {k: v for k, v in jwk(RSA_KEY, "x").items() if k != "kid"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "not an object",
    )
    keys = parse_key_set(body, ("RS256", "ES256"))
    assert {kid: k.algorithm_name for kid, k in keys.items()} == {"rsa": "RS256", "ec": "ES256"}
    assert set(parse_key_set(body, ("ES256",))) == {"ec"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"<html>", "not JSON"),
        (b'{"keys": {}}', "not a JWKS"),
        (b"[]", "not a JWKS"),
        (key_set({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}), "no signing key"),
    ],
)
def test_what_is_not_a_key_set_says_so(body: bytes, error: str) -> None:
    with pytest.raises(JwksError, match=error):
        parse_key_set(body, ("RS256", "ES256"))


async def test_tokens_verify_by_kid_and_only_with_their_key() -> None:
    fake = Fake(key_set(jwk(RSA_KEY, "rsa"), jwk(EC_KEY, "ec")))
    keys = fake.keys()
    assert await keys.load()
    verifier = TokenVerifier(secret="s" * 40, key_set=keys)
    assert verifier.verify(token(RSA_KEY, "rsa", "RS256")).sub == "alice"
    assert verifier.verify(token(EC_KEY, "ec", "ES256", sub="bob")).sub == "bob"
    for bad, error in (
        (token(RSA_KEY, "nope", "RS256"), "unknown signing key"),
        (token(RSA_KEY, None, "RS256"), "lacks 'kid'"),
        (token(RSA_KEY, "ec", "RS256"), "unknown signing key"),  # the kid's key is EC
        (token(EC_KEY, "rsa", "ES256"), "unknown signing key"),
        (jwt.encode({"sub": "x", "exp": 2**40}, "s" * 40, headers={"kid": "rsa"}), "invalid"),
        ("not.a.token", "invalid token"),
    ):
        with pytest.raises(TokenError, match=error):
            verifier.verify(bad)


async def test_a_withdrawn_key_stops_verifying_even_cached_tokens() -> None:
    fake = Fake(key_set(jwk(RSA_KEY, "old"), jwk(EC_KEY, "new")))
    keys = fake.keys(min_interval_s=0)
    await keys.load()
    verifier = TokenVerifier(key_set=keys, algorithms=["RS256", "ES256"])
    old = token(RSA_KEY, "old", "RS256")
    verifier.verify(old)  # now cached
    fake.body = key_set(jwk(EC_KEY, "new"))
    await keys.prepare(token(RSA_KEY, "unseen", "RS256"))  # any refresh will do
    assert keys.kids == {"new"}
    with pytest.raises(TokenError, match="unknown signing key"):
        verifier.verify(old)


async def test_unknown_kids_share_one_fetch_per_interval() -> None:
    fake = Fake(key_set(jwk(RSA_KEY, "rsa")))
    keys = fake.keys(min_interval_s=10)
    await keys.load()
    assert fake.calls == 1
    flood = [token(RSA_KEY, f"made-up-{n}", "RS256") for n in range(200)]
    await asyncio.gather(*(keys.prepare(t) for t in flood))
    assert fake.calls == 1  # the load was just now: none allowed yet
    fake.now += 10
    await asyncio.gather(*(keys.prepare(t) for t in flood))
    assert fake.calls == 2  # one for all 200, however many wait at once
    await keys.prepare(token(RSA_KEY, "rsa", "RS256"))  # a known kid: no fetch
    assert fake.calls == 2


async def test_the_idp_down_keeps_the_keys_we_have() -> None:
    fake = Fake(key_set(jwk(RSA_KEY, "rsa")))
    keys = fake.keys(min_interval_s=0)
    await keys.load()
    verifier = TokenVerifier(key_set=keys)
    fake.body = None  # down
    await keys.prepare(token(RSA_KEY, "other", "RS256"))
    assert fake.calls == 2 and keys.loaded
    assert verifier.verify(token(RSA_KEY, "rsa", "RS256")).sub == "alice"
    fake.body = b"<html>502 Bad Gateway</html>"  # up, but not answering a key set
    await keys.prepare(token(RSA_KEY, "other", "RS256"))
    assert keys.kids == {"rsa"}


async def test_the_first_read_failing_leaves_the_edge_not_ready_until_one_works() -> None:
    fake = Fake(key_set(jwk(RSA_KEY, "rsa")))
    fake.body = None
    keys = fake.keys(min_interval_s=2, refresh_s=300)
    assert not await keys.load()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            fake.body = key_set(jwk(RSA_KEY, "rsa"))
        if len(waits) == 4:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await keys.refresh_forever(sleep)
    # retried every min_interval_s while nothing was loaded, then every refresh_s
    assert waits == [2, 2, 300, 300]
    assert keys.loaded and keys.kids == {"rsa"}


async def test_a_refresh_frame_with_an_unknown_kid_starts_a_fetch_for_the_retry() -> None:
    fake = Fake(key_set(jwk(RSA_KEY, "rsa")))
    keys = fake.keys(min_interval_s=0)
    await keys.load()
    verifier = TokenVerifier(key_set=keys)
    fake.body = key_set(jwk(RSA_KEY, "rsa"), jwk(EC_KEY, "rotated"))
    fresh = token(EC_KEY, "rotated", "ES256")
    with pytest.raises(TokenError, match="unknown signing key"):
        verifier.verify(fresh)  # synchronous: cannot wait for the IdP
    for _ in range(500):  # the fetch it started, in the background
        await asyncio.sleep(0.01)
        if keys.has("rotated"):
            break
    assert verifier.verify(fresh).sub == "alice"


async def test_a_file_url_is_read_again_like_an_idp(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(key_set(jwk(RSA_KEY, "one")))
    keys = JwksKeys(path.as_uri(), min_interval_s=0)  # the real fetch: urllib reads file://
    assert await keys.load()
    path.write_bytes(key_set(jwk(RSA_KEY, "one"), jwk(EC_KEY, "two")))  # rotated
    await keys.prepare(token(EC_KEY, "two", "ES256"))
    assert keys.kids == {"one", "two"}


IDP = "https://idp.example/k"


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({}, "set SB_EDGE_JWT_SECRET or one of SB_EDGE_JWT_PUBLIC_KEY_FILE, SB_EDGE_JWT_JWKS_URL "),
        (
            {"SB_EDGE_JWT_JWKS_URL": IDP, "SB_EDGE_JWT_PUBLIC_KEY_FILE": "k"},
            "set one of SB_EDGE_JWT_PUBLIC_KEY_FILE, SB_EDGE_JWT_JWKS_URL, not several",
        ),
        ({"SB_EDGE_JWT_JWKS_URL": "ftp://idp.example/k"}, "SB_EDGE_JWT_JWKS_URL: URL scheme"),
        ({"SB_EDGE_JWT_JWKS_URL": "not a url"}, "SB_EDGE_JWT_JWKS_URL"),
        (
            {
                "SB_EDGE_JWT_JWKS_URL": IDP,
                "SB_EDGE_JWT_ALGORITHMS": '["HS256"]',
            },
            "SB_EDGE_JWT_JWKS_URL needs RS256 or ES256 in SB_EDGE_JWT_ALGORITHMS",
        ),
        (
            {"SB_EDGE_JWT_JWKS_URL": IDP, "SB_EDGE_JWT_JWKS_REFRESH_S": "0"},
            "SB_EDGE_JWT_JWKS_REFRESH_S",
        ),
    ],
)
def test_jwks_settings_that_cannot_work_name_their_keys(
    env: dict[str, str], error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=re.escape(error)):
        load_edge_settings()


def test_jwks_settings_that_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_EDGE_JWT_JWKS_URL", "https://idp.example/.well-known/jwks.json")
    monkeypatch.setenv("SB_EDGE_JWT_SECRET", "s" * 40)  # still signs resume tokens
    settings = load_edge_settings()
    assert str(settings.jwt_jwks_url) == "https://idp.example/.well-known/jwks.json"
