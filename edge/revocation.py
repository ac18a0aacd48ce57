"""Revoked tokens (DESIGN §2, §4): 403 at the upgrade, 4003 for open connections.

The server API's `revoke` writes an entry in `sb_revoked`: for a user, the moment
before which their tokens were issued (`iat`) no longer count. Every edge follows
the bucket, so the refusal holds on every pod and for every credential (a ticket
stands for a token; a resume token carries the original token's `iat`), and the
user's open connections whose token is older close with 4003. A token without
`iat` counts as issued before any revocation. Entries live `revocation_ttl_s` in
NATS (set it to at least your tokens' lifetime: by then every token a revocation
was about has expired anyway); an edge forgets them after as long.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from switchboard.contract.errors import TokenRevoked
from switchboard.contract.tokens import Claims, is_number

log = logging.getLogger("switchboard.edge.revocation")


def entry_key(user: str) -> str:
    """User ids may hold characters KV keys do not allow (`@`, `+`): hex them."""
    return user.encode().hex()


def entry_value(before: float) -> bytes:
    return json.dumps({"before": before}).encode()


class Revocations:
    """The users with a revocation, and since when, as `sb_revoked` says."""

    def __init__(self, ttl_s: float, on_revoked: Callable[[str], None]) -> None:
        self._ttl_s = ttl_s
        self._on_revoked = on_revoked  # a user's open connections may have to close
        self._before: dict[str, float] = {}
        self.complete = False  # the entries stored when the edge started were read

    def apply(self, key: str, value: bytes | None) -> None:
        """An entry of `sb_revoked` (None: deleted)."""
        try:
            user = bytes.fromhex(key).decode()
        except ValueError:
            log.warning("ignored a revocation with a malformed key", extra={"key": key})
            return
        if value is None:
            self._before.pop(user, None)
            return
        try:
            before = json.loads(value)["before"]
        except (ValueError, KeyError, TypeError):
            before = None
        if not is_number(before):
            log.warning("ignored a malformed revocation", extra={"user": user})
            return
        self._before[user] = float(before)
        log.info("tokens revoked", extra={"user": user, "before": before})
        self._on_revoked(user)

    def mark_complete(self) -> None:
        self.complete = True

    def revoked(self, claims: Claims, now: float | None = None) -> bool:
        before = self._before.get(claims.sub)
        if before is None:
            return False
        if (time.time() if now is None else now) > before + self._ttl_s:
            del self._before[claims.sub]  # every token it was about has expired
            return False
        return claims.iat is None or claims.iat < before

    def prune(self, now: float) -> int:
        """Forget the revocations every covered token has outlived (`before` + the TTL):
        NATS drops its entries silently, so without this an edge would keep those of
        users who never come back until it restarts. How many went."""
        gone = [user for user, before in self._before.items() if now > before + self._ttl_s]
        for user in gone:
            del self._before[user]
        return len(gone)

    def check(self, claims: Claims) -> Claims:
        """`claims`, or TokenRevoked."""
        if self._before and self.revoked(claims):
            raise TokenRevoked("token revoked")
        return claims

    def __len__(self) -> int:
        return len(self._before)
