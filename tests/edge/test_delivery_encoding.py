"""The hub's decode/encode path for backend messages, without sockets or NATS.

Backend data the edge could not send on as JSON arrives as its text; only
bytes that are not UTF-8 (and malformed presence frames) are dropped, and
those are counted. The hub's backbone and members are the fuzz harness'
stand-ins; tests/integration/test_nesting.py runs the same through NATS.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from edge import protocol
from edge.hub import decode_data
from edge.ports import Delivery
from tests.fuzz.harness import Core


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("body", "data"),
    [
        (b'{"a":[1,2]}', {"a": [1, 2]}),
        (nested(64).encode(), json.loads(nested(64))),
        (nested(65).encode(), nested(65)),  # deeper than the limit: its text
        (nested(975).encode(), nested(975)),  # issue 18: was acked, then lost
        (nested(20000).encode(), nested(20000)),  # deeper than the decoder goes
        (b"[NaN]", "[NaN]"),
        (b"1e999", "1e999"),
        (b'"\\ud800"', '"\\ud800"'),
        (b"9" * 4301, "9" * 4301),  # more digits than Python converts
        (b"", ""),
        (b"plain text", "plain text"),
    ],
)
def test_backend_data_is_json_or_its_text(body: bytes, data: Any) -> None:
    assert decode_data(body) == data
    frame = protocol.event_frame("c", decode_data(body), ts=1, sender="bot")
    assert json.loads(frame)["payload"]["data"] == data


@pytest.mark.parametrize("body", [b"\xff\xfe", b"\xed\xa0\x80", b'"\xc3"'])
def test_non_utf8_raises_for_the_hub_to_count(body: bytes) -> None:
    with pytest.raises(UnicodeDecodeError):
        decode_data(body)


@pytest.fixture(scope="module")
def core() -> Core:
    return Core()


@pytest.mark.parametrize("stored", [False, True])
def test_deep_backend_message_is_delivered_as_text(core: Core, stored: bool) -> None:
    handler = core.backbone.handlers[core.STORED if stored else core.PLAIN]
    core.member.frames.clear()
    dropped = core.hub.dropped
    handler(
        Delivery("sb.ch.news", nested(975).encode(), {"Sb-Ts": "5"}, offset=99 if stored else None)
    )
    assert core.hub.dropped == dropped
    [frame] = core.member.frames
    event = json.loads(frame)
    assert event["payload"]["data"] == nested(975)
    assert event["payload"]["ts"] == 5


def test_non_utf8_backend_message_is_counted_as_dropped(core: Core) -> None:
    core.member.frames.clear()
    dropped = core.hub.dropped
    core.backbone.handlers[core.PLAIN](Delivery("sb.ch.news", b"\xff", None))
    assert core.member.frames == []
    assert core.hub.dropped == dropped + 1


@pytest.mark.parametrize(
    ("body", "forwarded"),
    [
        (b'{"type":"join","payload":{"channel":"p:room","user":"bob"}}', True),
        (b'{"type":"join",\n"payload":{}}', False),  # would split into two lines
        (b"[1]", False),
        (b"NaN", False),
        (b"\xff", False),
        (("{" + '"a":{' * 70 + "}" * 71).encode(), False),
    ],
)
def test_presence_frames_are_forwarded_only_when_well_formed(
    core: Core, body: bytes, forwarded: bool
) -> None:
    core.member.frames.clear()
    dropped = core.hub.dropped
    core.backbone.handlers[core.feed_subject](Delivery(core.feed_subject, body, None))
    assert core.member.frames == ([body] if forwarded else [])
    assert core.hub.dropped == dropped + (0 if forwarded else 1)


@pytest.mark.parametrize(
    ("header", "from_header"),
    [
        ("1700000000000", True),
        ("abc", False),
        ("9" * 30, False),
        ("-5", False),
        ("+5", False),
        (" 12", False),
        ("1_000", False),
        ("١٢٣", False),
    ],
)
def test_sb_ts_is_used_only_when_plain_digits(core: Core, header: str, from_header: bool) -> None:
    frame = json.loads(core.hub.encode_event("c", 1, {"Sb-Ts": header}))
    if from_header:
        assert frame["payload"]["ts"] == int(header)
    else:  # the edge's own clock
        assert abs(frame["payload"]["ts"] - time.time() * 1000) < 60_000


def test_sender_that_cannot_be_utf8_is_replaced_not_fatal(core: Core) -> None:
    frame = core.hub.encode_event("c", 1, {"Sb-From": "bot\ud800"}).encode()
    assert json.loads(frame)["payload"]["from"] == "bot?"
