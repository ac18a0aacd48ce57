"""Pure checks on the HTTP upgrade request: credentials, Origin, and how to refuse."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from switchboard.contract.codes import CloseCode
from switchboard.contract.errors import TokenError, TokenRevoked

SUBPROTOCOL = "switchboard.v1"
BEARER_PREFIX = "bearer."
TICKET_BYTES = 24  # `POST /v1/tickets` mints 24 random bytes, base64url: 32 characters
TICKET_SHAPE = re.compile(r"[A-Za-z0-9_-]{32}")
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes

InBandMode = Literal["auto", "always", "never"]


@dataclass(frozen=True, slots=True)
class Credential:
    kind: Literal["jwt", "ticket", "resume"]
    value: str


def offered_subprotocols(header_values: Iterable[str]) -> list[str]:
    return [p.strip() for value in header_values for p in value.split(",") if p.strip()]


def find_credential(
    path: str, subprotocol_headers: Iterable[str], authorization: str | None
) -> Credential | None:
    """Ticket or resume token in the query, bearer token in the subprotocols, or Authorization."""
    if "?" in path:  # (most upgrades carry a bearer token and no query)
        query = parse_qs(urlsplit(path).query)
        if tickets := query.get("ticket"):
            return Credential("ticket", tickets[0])
        if resumes := query.get("resume"):
            return Credential("resume", resumes[0])
    for proto in offered_subprotocols(subprotocol_headers):
        if proto.startswith(BEARER_PREFIX) and len(proto) > len(BEARER_PREFIX):
            return Credential("jwt", proto[len(BEARER_PREFIX) :])
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return Credential("jwt", token.strip())
    return None


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """No Origin (non-browser) passes; otherwise the allow-list, or same host if empty."""
    if origin is None:
        return True
    if not allowed:
        return host is not None and urlsplit(origin).netloc == host
    return any(fnmatchcase(origin, pattern) for pattern in allowed)


def new_ticket() -> str:
    return secrets.token_urlsafe(TICKET_BYTES)


def is_ticket_shaped(value: str) -> bool:
    """What `new_ticket` makes; anything else is refused before the ticket store is asked."""
    return TICKET_SHAPE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused upgrade, as an HTTP answer or (for browsers) as a close right after 101.

    `status` is the HTTP status (401, 403, 429, 503), `reason` the text the client
    reads: the HTTP body, or the close reason for 4001/4003.
    """

    status: int
    reason: str
    retry_after_s: int | None = None

    @property
    def close_code(self) -> int:
        if self.status == 401:
            return CloseCode.TOKEN_EXPIRED
        if self.status == 403:
            return CloseCode.FORBIDDEN
        return CloseCode.TRY_AGAIN_LATER  # 429, 503: over the rate, full, draining

    @property
    def close_reason(self) -> str:
        if self.close_code == CloseCode.TRY_AGAIN_LATER:
            return f"retry after {(self.retry_after_s or 1) * 1000}"
        return truncate_utf8(self.reason, MAX_CLOSE_REASON_BYTES)

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


def token_refusal(exc: TokenError) -> Refusal:
    """A refused credential: 403 when revoked (do not come back), else 401."""
    return Refusal(403 if isinstance(exc, TokenRevoked) else 401, str(exc))


def truncate_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, never inside a character."""
    return text.encode()[:limit].decode(errors="ignore")


def refuse_in_band(mode: InBandMode, origin: str | None) -> bool:
    """Whether a refusal is sent as a close after 101 (readable by page JavaScript)
    rather than as an HTTP status; `auto` does so for browsers, which send `Origin`."""
    if mode == "auto":
        return origin is not None
    return mode == "always"


def route(path: str) -> str:
    return urlsplit(path).path
