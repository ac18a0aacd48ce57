"""JWT verification (edge) and minting (dev tooling), on PyJWT.

Claims (DESIGN §2): `sub` and `exp` required; `roles`, `channels`, `publish`
optional lists. `None` for `channels`/`publish` means "the token does not
restrict; the channel's configuration decides".
"""

from __future__ import annotations

import binascii
import hmac
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from jwt.algorithms import Algorithm

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
    iat: float | None = None  # when the token was issued: revocations compare it

    def to_jwt_claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sub": self.sub, "exp": int(self.exp), "roles": list(self.roles)}
        if self.iat is not None:
            out["iat"] = int(self.iat)
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
    HS256 secret: the first of these configured.

    The checks are PyJWT's `jwt.decode` (with `require: [sub, exp]`, `leeway`,
    `audience`, `issuer`) in the same order with the same outcomes, without its
    per-call costs: the key is prepared once (PyJWT re-checks that an HMAC secret
    is not a PEM, SSH or DER key on every call, ~20 µs), base64url segments are
    checked by one regular expression instead of a generator over every
    character, and the claims are read once. The signature itself is checked by
    PyJWT's algorithm objects. `tests/contract/test_token_verifier.py` holds it
    to `jwt.decode` over crafted and generated tokens.
    """

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
        key: str | bytes = b""
        if key_set is not None:
            algorithms = [a for a in algorithms if a != "HS256"]
        elif public_key_file is not None:
            key = public_key_file.read_bytes()
            algorithms = [a for a in algorithms if a != "HS256"]
        elif secret is not None:
            key = secret
            algorithms = [a for a in algorithms if a == "HS256"]
        else:
            raise ValueError("a secret or a public key is required")
        if not algorithms:
            raise ValueError("no accepted algorithm fits the configured key")
        self._algorithms = algorithms
        self._by_name = {name: jwt.get_algorithm_by_name(name) for name in algorithms}
        # alg -> (algorithm, prepared key), or None when the key does not fit that
        # algorithm (such tokens are invalid, as their signature could never verify);
        # with a key set, keys come by `kid` from the set instead
        self._keys: dict[str, tuple[Algorithm, Any] | None] = {}
        if key_set is None:
            for name, algorithm in self._by_name.items():
                try:
                    self._keys[name] = (algorithm, algorithm.prepare_key(key))
                except jwt.InvalidKeyError:
                    self._keys[name] = None
            if not any(self._keys.values()):
                raise ValueError(f"the key fits none of the accepted algorithms {algorithms}")
        hs256 = self._keys.get("HS256")
        self._hmac_key: bytes | None = hs256[1] if hs256 is not None else None
        self._leeway = leeway_s
        self._audience = audience
        self._issuer = issuer
        # Verified tokens, so a reconnect storm (a drain moves thousands of clients
        # holding the same tokens) costs one signature check per token, not per try.
        # Safe because the key string is the whole signed token: the same string
        # verifies the same way, except for time, and `exp` is checked again on every
        # hit (`nbf`/`iat` in the future never got in). The key cannot change in a
        # running process (a key set's keys can: an entry names the `kid` that verified
        # it and stops counting once that key is withdrawn), and nothing revokes a
        # token before its `exp`.
        self._verified: OrderedDict[str, tuple[Claims, str | None]] = OrderedDict()
        self._cache_size = cache_size
        # Decoded token headers by their encoded segment: every token an issuer signs
        # has the same few headers ({"alg":"HS256","typ":"JWT"}, a `kid`), so a
        # handshake decodes only its payload. Cleared when full (junk headers).
        self._headers: dict[bytes, dict[str, Any]] = {}

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
        claims, kid = self._verify_signature(token, now)
        if self._cache_size > 0:
            self._verified[token] = claims, kid
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return claims

    def _verify_signature(self, token: str, now: float) -> tuple[Claims, str | None]:
        payload, kid = self._decode(token)
        self._check_claims(payload, now)
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
            iat=float(payload["iat"]) if "iat" in payload else None,
        )
        return claims, kid

    def _decode(self, token: str) -> tuple[dict[str, Any], str | None]:
        """The payload of a well-formed token whose signature verifies (PyJWS's checks),
        and the `kid` of the key-set key that verified it."""
        raw = token.encode()
        signing_input, dot, crypto = raw.rpartition(b".")
        header_segment, dot2, payload_segment = signing_input.partition(b".")
        if not dot or not dot2:
            raise _invalid()
        header = self._headers.get(header_segment)
        if header is None:
            header = _json_object(_b64url(header_segment))
            if len(self._headers) >= MAX_HEADERS_KEPT:
                self._headers.clear()
            self._headers[header_segment] = header  # (only read from here on)
        detached = header.get("b64", True) is False  # RFC 7797: never ours (refused below)
        if detached and payload_segment:
            raise _invalid()
        payload_json = b"" if detached else _b64url(payload_segment)
        hs256 = self._hmac_key is not None and self.key_set is None and not detached
        # (HS256: decoded below only if it is not the expected signature's encoding)
        signature = b"" if hs256 else _b64url(crypto)
        if "kid" in header and not isinstance(header["kid"], str):
            raise _invalid()
        if "crit" in header:
            crit = header["crit"]
            if not isinstance(crit, list) or not crit:
                raise _invalid()
            for ext in crit:
                if not isinstance(ext, str) or ext != "b64" or ext not in header:
                    raise _invalid()
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._by_name:
            raise _invalid()
        kid: str | None = None
        if self.key_set is not None:
            kid = header.get("kid")
            if not isinstance(kid, str):
                raise TokenError("token header lacks 'kid'")
            key = self.key_set.key(kid, alg)
            if key is None:
                raise TokenError("unknown signing key")
            if detached or not self._by_name[alg].verify(signing_input, key, signature):
                raise _invalid()
        elif detached:
            raise _invalid()
        elif alg == "HS256" and self._hmac_key is not None:  # HMAC verify in one C call
            digest = hmac.digest(self._hmac_key, signing_input, "sha256")
            # Compared as encoded (what issuers send) without decoding the segment;
            # any other form of it is decoded, strictly, and compared as before.
            encoded = binascii.b2a_base64(digest, newline=False).translate(_TO_URLSAFE)
            if not hmac.compare_digest(crypto, encoded[:-1]) and not hmac.compare_digest(
                _b64url(crypto), digest
            ):  # (the encoded form: 43 characters, no "=")
                raise _invalid()
        else:
            prepared = self._keys[alg]
            if prepared is None or not prepared[0].verify(signing_input, prepared[1], signature):
                raise _invalid()
        return _json_object(payload_json), kid

    def _check_claims(self, payload: dict[str, Any], now: float) -> None:
        """PyJWT's claim checks, in its order: required, iat, nbf, exp, iss, aud, sub, jti."""
        for name in ("sub", "exp"):
            if payload.get(name) is None:
                raise TokenError(f"token lacks claim '{name}'")
        leeway = self._leeway
        if "iat" in payload and _as_int(payload["iat"]) > now + leeway:
            raise _invalid()
        if "nbf" in payload and _as_int(payload["nbf"]) > now + leeway:
            raise _invalid()
        if _as_int(payload["exp"]) <= now - leeway:
            raise TokenError("token expired")
        if self._issuer is not None:
            if "iss" not in payload:
                raise TokenError("token lacks claim 'iss'")
            if payload["iss"] != self._issuer:  # (a non-string never equals it)
                raise TokenError("token is from another issuer")
        if self._audience is not None:
            aud = payload.get("aud")
            if not aud:
                raise TokenError("token lacks claim 'aud'")
            audiences = [aud] if isinstance(aud, str) else aud
            if (
                not isinstance(audiences, list)
                or any(not isinstance(a, str) for a in audiences)
                or self._audience not in audiences
            ):
                raise TokenError("token is for another audience")
        if not isinstance(payload["sub"], str):
            raise _invalid()
        if "jti" in payload and not isinstance(payload["jti"], str):
            raise _invalid()


def _invalid() -> TokenError:
    """What every malformed, forged or unacceptable token gets (one new exception each:
    a shared one would collect the traceback of every raise)."""
    return TokenError("invalid token")


MAX_HEADERS_KEPT = 64
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64url(segment: bytes) -> bytes:
    """A base64url segment as PyJWS accepts it: up to two `=` of padding, only the
    alphabet, and the canonical encoding of what it decodes to."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4):
        raise _invalid()
    if len(stripped) % 4 == 1 or _B64URL.fullmatch(stripped) is None:
        raise _invalid()
    decoded = binascii.a2b_base64(stripped.translate(_FROM_URLSAFE) + b"=" * (-len(stripped) % 4))
    if binascii.b2a_base64(decoded, newline=False).translate(_TO_URLSAFE).rstrip(b"=") != stripped:
        raise _invalid()
    return decoded


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise _invalid() from None
    if not isinstance(value, dict):
        raise _invalid()
    return value


def _as_int(value: Any) -> int:
    """`int()` of a time claim, as PyJWT reads it before comparing."""
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError):
        raise _invalid() from None


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
        iat=issued,
    )
    body = claims.to_jwt_claims()
    return jwt.encode(body, secret, algorithm="HS256")
