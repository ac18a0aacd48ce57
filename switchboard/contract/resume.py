"""Resume tokens (DESIGN §5): handed out in `reconnect` during a drain.

Signed with the cluster secret, they carry the user's claims (with the original
expiry) and each subscription's channel, offset and epoch, so any edge can
accept `?resume=` in place of a token and restore the subscriptions from there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from switchboard.contract.tokens import (
    RESUME_AUDIENCE,
    TIME_CLAIMS,
    Claims,
    TokenError,
    check_time_claims,
)

AUDIENCE = RESUME_AUDIENCE


@dataclass(frozen=True, slots=True)
class Resume:
    """What a resume token says: who, which subscriptions from where, and whether a
    shed (rebalancing) moved the client, whom no other shedding pod takes back."""

    claims: Claims
    subscriptions: list[dict[str, Any]]
    shed: bool = False


def mint_resume(
    secret: str,
    claims: Claims,
    subscriptions: list[dict[str, Any]],
    *,
    ttl_s: float,
    now: float | None = None,
    shed: bool = False,
) -> str:
    issued = time.time() if now is None else now
    body = claims.to_jwt_claims() | {
        "aud": AUDIENCE,
        "exp": int(issued + ttl_s),
        "token_exp": claims.exp,
        "subs": subscriptions,
    }
    if claims.iat is not None:  # the original token's; never ahead of now (no leeway here)
        body["iat"] = int(min(claims.iat, issued))
    if shed:
        body["shed"] = True
    return jwt.encode(body, secret, algorithm="HS256")


def read_resume(
    secret: str, token: str, now: float | None = None
) -> tuple[Claims, list[dict[str, Any]]]:
    """The claims to connect with and the subscriptions to restore, or TokenError."""
    resume = read_resume_token(secret, token, now)
    return resume.claims, resume.subscriptions


def read_resume_token(secret: str, token: str, now: float | None = None) -> Resume:
    """The whole token (`read_resume` plus how the client was moved), or TokenError."""
    try:
        body = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=AUDIENCE,
            options={"require": ["sub", "exp", "token_exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("resume token expired") from None
    except jwt.InvalidTokenError:
        raise TokenError("invalid resume token") from None
    check_time_claims(body, (*TIME_CLAIMS, "token_exp"))
    moment = time.time() if now is None else now
    if float(body["token_exp"]) <= moment:
        raise TokenError("token expired")
    subs = body.get("subs")
    if not isinstance(subs, list) or not all(isinstance(s, dict) for s in subs):
        raise TokenError("invalid resume token")
    claims = Claims(
        sub=str(body["sub"]),
        exp=float(body["token_exp"]),
        roles=tuple(body.get("roles") or ()),
        channels=None if body.get("channels") is None else tuple(body["channels"]),
        publish=None if body.get("publish") is None else tuple(body["publish"]),
        iat=float(body["iat"]) if "iat" in body else None,  # the original token's
    )
    return Resume(claims, subs, body.get("shed") is True)
