"""Who may open a connection: the checks of the WebSocket upgrade, in the order
docs/protocol.md §2 gives (Origin, draining, cap, new-connection rate, credential).

The checks run synchronously in the socket's callback; only a `?ticket=` (the
ticket store is in NATS) or a token signed by a JWKS key not read yet needs I/O,
so only then does the upgrade wait in a task."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import jwt

from edge.http import HttpRequest
from edge.jwks import JwksKeys
from edge.node import Node
from edge.ports import Unavailable
from edge.ratelimit import TokenBucket
from edge.upgrade import (
    Refusal,
    find_credential,
    is_ticket_shaped,
    origin_allowed,
    refuse_in_band,
    token_refusal,
)
from switchboard.contract.resume import read_resume_token
from switchboard.contract.tokens import Claims, TokenError, TokenVerifier

ORIGIN_REFUSAL = Refusal(403, "origin not allowed")


@dataclass(frozen=True, slots=True)
class Admitted:
    claims: Claims
    resume: list[dict[str, Any]] | None = None  # subscriptions to restore (`?resume=`)


@dataclass(frozen=True, slots=True)
class Pending:
    """`Admission.settle` decides: a `?ticket=` to redeem (NATS), or a token whose
    `kid` is not in the JWKS read so far (it is read again first)."""

    ticket: str | None = None
    token: str | None = None


class Admission:
    """Decides each upgrade: who it is (and what to resume), or why not."""

    def __init__(self, node: Node, verifier: TokenVerifier) -> None:
        self.node = node
        self.verifier = verifier
        keys = verifier.key_set
        self.keys = keys if isinstance(keys, JwksKeys) else None
        node.jwks = self.keys  # readiness waits for the first read
        settings = node.settings
        self._upgrades = TokenBucket(
            settings.new_connections_per_s, settings.new_connections_burst, time.monotonic()
        )

    async def verify(self, token: str) -> Claims:
        """The token's claims, or TokenError (TokenRevoked: revoked); a JWKS is read
        first when the token names a key not seen yet (edge/jwks.py: shared,
        rate-limited, never blocking)."""
        if self.keys is not None:
            await self.keys.prepare(token)
        return self.verify_now(token)

    def verify_now(self, token: str) -> Claims:
        """`verify` with the keys read so far."""
        return self.node.revocations.check(self.verifier.verify(token))

    def in_band(self, refusal: Refusal, request: HttpRequest) -> bool:
        """Refuse with a close after 101 (browsers), not the HTTP status? Never for a
        forbidden Origin: a page from another site learns nothing."""
        if refusal is ORIGIN_REFUSAL:
            return False
        return refuse_in_band(self.node.settings.in_band_refusals, request.headers.get("Origin"))

    def origin_ok(self, request: HttpRequest) -> bool:
        return origin_allowed(
            request.headers.get("Origin"),
            request.headers.get("Host"),
            self.node.settings.allowed_origins,
        )

    def check(self, request: HttpRequest) -> Admitted | Refusal | Pending:
        node = self.node
        if not self.origin_ok(request):
            return ORIGIN_REFUSAL
        if not node.accepting:
            return Refusal(503, "edge is draining", retry_after_s=1)
        if len(node.members) >= node.settings.max_connections:
            return Refusal(503, "edge is full", retry_after_s=5)
        if not self._upgrades.take(time.monotonic()):
            return Refusal(429, "too many new connections", retry_after_s=1)
        credential = find_credential(
            request.path,
            request.headers.get_all("Sec-WebSocket-Protocol"),
            request.headers.get("Authorization"),
        )
        if credential is None:
            return Refusal(401, "missing credentials")
        if credential.kind == "resume":
            secret = node.resume_secret
            if secret is None:
                return Refusal(401, "resume tokens are not enabled")
            try:
                resume = read_resume_token(secret, credential.value)
                node.revocations.check(resume.claims)
            except TokenError as exc:
                return token_refusal(exc)
            if resume.shed and node.shedding:
                # A client a shed moved must land on a pod that is not shedding (the
                # Service may send it back here); its SDK retries with the same token.
                return Refusal(503, "edge is shedding", retry_after_s=1)
            return Admitted(resume.claims, resume.subscriptions)
        if credential.kind == "ticket":
            return Pending(ticket=credential.value)
        if self._names_unknown_key(credential.value):
            return Pending(token=credential.value)
        try:
            return Admitted(self.verify_now(credential.value))
        except TokenError as exc:
            return token_refusal(exc)

    async def settle(self, pending: Pending) -> Admitted | Refusal:
        """Decide what `check` could not without I/O: redeem the ticket, read the JWKS."""
        token = pending.token
        if pending.ticket is not None:
            redeemed = await self._redeem(pending.ticket)
            if isinstance(redeemed, Refusal):
                return redeemed
            token = redeemed
        assert token is not None
        try:
            return Admitted(await self.verify(token))
        except TokenError as exc:
            return token_refusal(exc)

    def _names_unknown_key(self, token: str) -> bool:
        """With a JWKS: the token's `kid` is not among the keys read so far."""
        if self.keys is None:
            return False
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            return False  # the verifier says why
        return isinstance(kid, str) and not self.keys.has(kid)

    async def _redeem(self, ticket: str) -> str | Refusal:
        """The token a ticket stands for, once across all edges."""
        if not is_ticket_shaped(ticket):
            return Refusal(401, "malformed ticket")
        try:
            stored = await self.node.backbone.take_ticket(ticket)
        except Unavailable:
            return Refusal(503, "ticket store unavailable", retry_after_s=1)
        if stored is None:
            return Refusal(401, "unknown or used ticket")
        record = json.loads(stored)
        if time.time() - record["created"] > self.node.settings.ticket_ttl_s:
            return Refusal(401, "ticket expired")
        return str(record["token"])
