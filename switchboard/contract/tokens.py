"""JWT verification (edge) and minting (dev tooling), on PyJWT.

Claims (DESIGN §2): `sub` and `exp` required; `roles`, `channels`, `publish`
optional lists. `None` for `channels`/`publish` means "the token does not
restrict; the channel's configuration decides".
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt

from switchboard.contract.channels import is_valid_user_id
from switchboard.contract.errors import TokenError as TokenError  # its home before errors.py

# The audience of resume tokens (switchboard/contract/resume.py). They are signed with the same
# secret as JWTs by default, so a bearer token with this audience is refused even when
# `jwt_audience` is unset: a resume token is good for `?resume=` only.
RESUME_AUDIENCE = "switchboard-resume"
TIME_CLAIMS = ("exp", "nbf", "iat")


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    exp: float
    roles: tuple[str, ...] = ()
    channels: tuple[str, ...] | None = None
    publish: tuple[str, ...] | None = None

    def to_jwt_claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sub": self.sub, "exp": int(self.exp), "roles": list(self.roles)}
        if self.channels is not None:
            out["channels"] = list(self.channels)
        if self.publish is not None:
            out["publish"] = list(self.publish)
        return out


def is_number(value: object) -> bool:
    """A JSON number (PyJWT alone would also take `"1700000000"` and `true`)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_time_claims(payload: dict[str, Any], names: tuple[str, ...] = TIME_CLAIMS) -> None:
    for name in names:
        if name in payload and not is_number(payload[name]):
            raise TokenError(f"claim '{name}' must be a number")


def _audiences(payload: dict[str, Any]) -> list[object]:
    aud = payload.get("aud")
    return aud if isinstance(aud, list) else [aud]


def _str_list(payload: dict[str, Any], name: str) -> tuple[str, ...] | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenError(f"claim '{name}' must be a list of strings")
    return tuple(value)


class KeySet(Protocol):
    """Public keys by `kid`, e.g. an identity provider's JWKS (edge/jwks.py fetches it)."""

    def key(self, kid: str, algorithm: str) -> Any | None:
        """The key that verifies `algorithm` signatures under `kid`, else None."""
        ...

    def has(self, kid: str) -> bool:
        """Whether `kid` is (still) in the set."""
        ...


class TokenVerifier:
    """Verifies tokens with a key set (JWKS, by `kid`), one PEM public key, or one
    HS256 secret: the first of these configured."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key_file: Path | None = None,
        key_set: KeySet | None = None,
        algorithms: list[str] | None = None,
        leeway_s: float = 5.0,
        audience: str | None = None,
        issuer: str | None = None,
        cache_size: int = 10_000,
    ) -> None:
        algorithms = algorithms or ["HS256", "RS256", "ES256"]
        self.key_set = key_set
        self._key: str | bytes = b""
        if key_set is not None:
            self._algorithms = [a for a in algorithms if a != "HS256"]
        elif public_key_file is not None:
            self._key = public_key_file.read_bytes()
            self._algorithms = [a for a in algorithms if a != "HS256"]
        elif secret is not None:
            self._key = secret
            self._algorithms = [a for a in algorithms if a == "HS256"]
        else:
            raise ValueError("a secret or a public key is required")
        if not self._algorithms:
            raise ValueError("no accepted algorithm fits the configured key")
        self._leeway = leeway_s
        self._audience = audience
        self._issuer = issuer
        # Verified tokens, so a reconnect storm (a drain moves thousands of clients
        # holding the same tokens) costs one signature check per token, not per try.
        # (with the kid that verified it, when a key set did: withdrawn, it stops counting)
        self._verified: OrderedDict[str, tuple[Claims, str | None]] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str, now: float | None = None) -> Claims:
        """The token's claims, or TokenError; signatures are checked once per token."""
        now = time.time() if now is None else now
        cached = self._verified.get(token)
        if cached is not None:
            claims, kid = cached
            if kid is not None and self.key_set is not None and not self.key_set.has(kid):
                del self._verified[token]  # its key was withdrawn: check it again (and fail)
            elif claims.exp + self._leeway < now:
                del self._verified[token]
                raise TokenError("token expired")
            else:
                self._verified.move_to_end(token)
                return claims
        claims, kid = self._verify_signature(token)
        if self._cache_size > 0:
            self._verified[token] = claims, kid
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return claims

    def _signing_key(self, token: str) -> tuple[Any, list[str], str | None]:
        """The key, the algorithms it may verify, and the kid it came by."""
        if self.key_set is None:
            return self._key, self._algorithms, None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("invalid token") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self._algorithms:
            raise TokenError("invalid token")
        if not isinstance(kid, str):
            raise TokenError("token header lacks 'kid'")
        key = self.key_set.key(kid, algorithm)
        if key is None:
            raise TokenError("unknown signing key")
        return key, [algorithm], kid

    def _verify_signature(self, token: str) -> tuple[Claims, str | None]:
        key, algorithms, kid = self._signing_key(token)
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                leeway=self._leeway,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["sub", "exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token lacks claim '{exc.claim}'") from None
        except jwt.InvalidAudienceError:
            raise TokenError("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError("token is from another issuer") from None
        except jwt.InvalidTokenError:
            raise TokenError("invalid token") from None
        check_time_claims(payload)
        if RESUME_AUDIENCE in _audiences(payload):
            raise TokenError("a resume token is accepted only as ?resume=")
        sub = payload["sub"]
        if not isinstance(sub, str) or not is_valid_user_id(sub):
            raise TokenError("claim 'sub' must be 1-128 of [A-Za-z0-9_@=+-]")
        claims = Claims(
            sub=sub,
            exp=float(payload["exp"]),
            roles=_str_list(payload, "roles") or (),
            channels=_str_list(payload, "channels"),
            publish=_str_list(payload, "publish"),
        )
        return claims, kid


def mint_token(
    secret: str,
    sub: str,
    *,
    ttl_s: float = 3600,
    roles: list[str] | None = None,
    channels: list[str] | None = None,
    publish: list[str] | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token, for development and tests (production tokens come from your IdP)."""
    issued = time.time() if now is None else now
    claims = Claims(
        sub=sub,
        exp=issued + ttl_s,
        roles=tuple(roles or ()),
        channels=None if channels is None else tuple(channels),
        publish=None if publish is None else tuple(publish),
    )
    body = claims.to_jwt_claims() | {"iat": int(issued)}
    return jwt.encode(body, secret, algorithm="HS256")
