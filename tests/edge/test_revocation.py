"""Which tokens a revocation covers (edge/revocation.py), without NATS."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge.memory import MemoryBackbone
from edge.revocation import Revocations, entry_key, entry_value
from switchboard.contract.errors import TokenRevoked
from switchboard.contract.tokens import Claims
from tests.edge.core import join, link_of, make_node

BEFORE = 1_800_000_000.5
TTL_S = 3600.0


def claims(user: str = "alice", iat: float | None = BEFORE - 10) -> Claims:
    return Claims(sub=user, exp=BEFORE + 7200, iat=iat)


@pytest.mark.parametrize(
    ("name", "who", "now", "revoked"),
    [
        ("issued before", claims(iat=BEFORE - 10), BEFORE + 1, True),
        ("issued in the second of the revocation", claims(iat=BEFORE - 0.5), BEFORE + 1, True),
        ("issued at the moment", claims(iat=BEFORE), BEFORE + 1, False),
        ("issued after", claims(iat=BEFORE + 60), BEFORE + 61, False),
        ("no iat: issued at an unknown time", claims(iat=None), BEFORE + 1, True),
        ("another user", claims("bob"), BEFORE + 1, False),
        ("the entry outlived its TTL", claims(iat=BEFORE - 10), BEFORE + TTL_S + 1, False),
    ],
)
def test_a_revocation_covers_the_users_older_tokens(
    name: str, who: Claims, now: float, revoked: bool
) -> None:
    closed: list[str] = []
    revocations = Revocations(TTL_S, closed.append)
    revocations.apply(entry_key("alice"), entry_value(BEFORE))
    assert closed == ["alice"]  # its open connections are looked at
    assert revocations.revoked(who, now) is revoked, name


def test_check_raises_token_revoked_for_covered_claims_only() -> None:
    revocations = Revocations(TTL_S, lambda user: None)
    assert revocations.check(claims()) == claims()  # nothing revoked yet
    revocations.apply(entry_key("alice"), entry_value(1e12))  # far ahead: every token
    with pytest.raises(TokenRevoked, match="token revoked"):
        revocations.check(claims())
    assert revocations.check(claims("bob")) == claims("bob")


def test_deleted_and_malformed_entries() -> None:
    closed: list[str] = []
    revocations = Revocations(TTL_S, closed.append)
    user = "a@b+c"  # characters a KV key does not allow: hexed
    assert entry_key(user) == user.encode().hex()
    revocations.apply(entry_key(user), entry_value(BEFORE))
    assert revocations.revoked(claims(user), BEFORE + 1) and len(revocations) == 1
    revocations.apply(entry_key(user), None)  # deleted
    assert not revocations.revoked(claims(user), BEFORE + 1) and len(revocations) == 0
    for key, value in (
        ("not hex", entry_value(BEFORE)),
        (entry_key("x"), b"not json"),
        (entry_key("x"), b'{"before": "soon"}'),
        (entry_key("x"), b'{"before": true}'),
        (entry_key("x"), b"[1]"),
    ):
        revocations.apply(key, value)  # ignored, logged
    assert len(revocations) == 0 and closed == [user]


async def test_a_revocation_closes_the_users_connections_with_4003() -> None:
    """Through the Backbone port's watch, as an edge runs it (in memory here; the NATS
    path is tests/integration/test_server_api.py)."""
    backbone = MemoryBackbone()
    node = make_node(backbone)
    alice, alice_too, bob = [await join(node, u) for u in ("alice", "alice", "bob")]
    watch = asyncio.create_task(
        backbone.watch_revocations(node.revocations.apply, node.revocations.mark_complete)
    )
    await asyncio.sleep(0)
    assert node.revocations.complete  # an empty bucket: read at once
    await backbone.put_revocation(entry_key("alice"), entry_value(time.time()))
    await asyncio.sleep(0)
    assert link_of(alice).closed == link_of(alice_too).closed == (4003, "token revoked")
    assert link_of(bob).closed is None
    watch.cancel()
    for member in (alice, alice_too, bob):
        await member.finish()


def test_prune_forgets_what_every_covered_token_has_outlived() -> None:
    """NATS drops expired entries without telling the edge: the sweep forgets those whose
    `before` + TTL has passed (no token they covered is still valid), and only those."""
    revocations = Revocations(TTL_S, lambda user: None)
    revocations.apply(entry_key("old"), entry_value(BEFORE))
    revocations.apply(entry_key("new"), entry_value(BEFORE + 100))
    assert revocations.prune(BEFORE + TTL_S) == 0  # not past yet
    assert revocations.prune(BEFORE + TTL_S + 1) == 1
    assert len(revocations) == 1
    assert revocations.revoked(claims("new", iat=BEFORE), BEFORE + TTL_S + 1)
    assert revocations.prune(BEFORE + 100 + TTL_S + 1) == 1 and len(revocations) == 0
