"""The bounded outbox and the pure upgrade checks."""

from __future__ import annotations

import pytest

from edge.outbox import Outbox
from edge.ratelimit import TokenBucket
from edge.upgrade import Credential, find_credential, origin_allowed


def test_outbox_coalesces_pending_frames_with_newlines() -> None:
    box = Outbox(max_bytes=1000, grace_s=2)
    assert box.take() is None
    box.push(b'{"a":1}', 0)
    assert box.take() == b'{"a":1}'
    box.push(b'{"a":1}', 0)
    box.push(b'{"b":2}', 0)
    assert box.take() == b'{"a":1}\n{"b":2}'
    assert box.pending_bytes == 0


def test_outbox_overflow_refuses_and_frees() -> None:
    box = Outbox(max_bytes=100, grace_s=2)
    assert box.push(b"x" * 60, 0)
    assert not box.push(b"y" * 60, 0)
    assert box.overflowed
    assert box.pending_bytes == 0
    assert not box.push(b"z", 0)  # once over, the connection is on its way out


def test_outbox_stalls_after_grace() -> None:
    box = Outbox(max_bytes=100, grace_s=2)
    assert not box.stalled(50)
    box.push(b"x", 10)
    assert not box.stalled(11.9)
    assert box.stalled(12.1)
    box.take()
    assert not box.stalled(100)


def test_token_bucket_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=0)
    assert bucket.take(0)
    assert bucket.take(0)
    assert not bucket.take(0)
    assert bucket.take(0.1)
    assert not bucket.take(0.1)


@pytest.mark.parametrize(
    ("path", "protocols", "authorization", "expected"),
    [
        ("/v1/ws?ticket=abc", [], None, Credential("ticket", "abc")),
        ("/v1/ws", ["switchboard.v1, bearer.T1"], None, Credential("jwt", "T1")),
        ("/v1/ws", ["switchboard.v1", "bearer.T2"], None, Credential("jwt", "T2")),
        ("/v1/ws", [], "Bearer T3", Credential("jwt", "T3")),
        ("/v1/ws", [], "bearer   T4 ", Credential("jwt", "T4")),
        ("/v1/ws", ["switchboard.v1"], "Basic xyz", None),
        ("/v1/ws", ["bearer."], None, None),
        ("/v1/ws", [], None, None),
    ],
)
def test_find_credential(
    path: str, protocols: list[str], authorization: str | None, expected: Credential | None
) -> None:
    assert find_credential(path, protocols, authorization) == expected


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "h:1", [], True),
        ("http://h:1", "h:1", [], True),
        ("http://evil:1", "h:1", [], False),
        ("https://app.example", "h", ["https://app.example"], True),
        ("https://x.app.example", "h", ["https://*.app.example"], True),
        ("https://evil.example", "h", ["https://*.app.example"], False),
        ("https://any", "h", ["*"], True),
    ],
)
def test_origin_allowed(origin: str | None, host: str, allowed: list[str], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok


def test_outbox_frames_are_bounded_and_progress_restarts_grace() -> None:
    box = Outbox(max_bytes=10_000, grace_s=2)
    for _ in range(30):
        box.push(b"x" * 99, 0)  # 100 bytes each with the separator
    first = box.take(now=5, max_frame=1000)
    assert first is not None
    assert first.count(b"\n") == 9  # ten frames fit in 1000
    assert box.pending_bytes == 2000
    assert not box.stalled(6.9)  # the rest waits from the moment of progress
    assert box.stalled(7.1)
    assert box.take(now=8, max_frame=1000) is not None
    assert box.take(now=8, max_frame=1000) is not None
    assert box.take(now=8, max_frame=1000) is None
    assert box.pending_bytes == 0
