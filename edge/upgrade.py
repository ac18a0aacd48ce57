"""Pure checks on the HTTP upgrade request: credentials and Origin."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal
from urllib.parse import parse_qs, urlsplit

SUBPROTOCOL = "switchboard.v1"
BEARER_PREFIX = "bearer."


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


def route(path: str) -> str:
    return urlsplit(path).path
