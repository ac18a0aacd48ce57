"""The SSE wire format (`edge.eventstream`) and the stream request (`edge.sse`) without
sockets: events from frames, ids that carry positions, `Last-Event-ID` read back, and
bad input refused with a reason."""

from __future__ import annotations

import base64

import pytest

from edge import protocol
from edge.eventstream import BadEventId, EventStream, decode_id, encode_id, frame_type
from edge.http import HttpRequest, RequestHeaders
from edge.protocol import Position
from edge.sse import StreamRequest, read_stream_request, subscriptions_for
from edge.upgrade import Refusal


def parse(stream: bytes) -> list[dict[str, str]]:
    """Events as the SSE spec reads them (last value of each field)."""
    events = []
    for block in stream.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and ": " in line)
        if fields:
            events.append(fields)
    return events


def event(channel: str, data: object, offset: int | None = None, epoch: str = "e1") -> bytes:
    extra = {} if offset is None else {"offset": offset, "epoch": epoch}
    return protocol.event_frame(channel, data, ts=1, sender=None, extra=extra).encode()


def test_each_frame_is_one_event_named_by_its_type_with_its_json_as_data() -> None:
    stream = EventStream()
    welcome = protocol.frame("welcome", {"user": "a"}).encode()
    out = parse(stream.encode(welcome + b"\n" + event("plain", {"x": "a\\nb"})))
    assert [e["event"] for e in out] == ["welcome", "event"]
    assert out[1]["data"] == event("plain", {"x": "a\\nb"}).decode()
    assert "id" not in out[0]  # no history channel yet: nothing to recover


def test_ids_carry_every_history_channels_newest_offset() -> None:
    stream = EventStream()
    stream.encode(
        protocol.ack("s", {"channel": "a", "offset": 4, "epoch": "e1", "recovered": False}).encode()
    )
    stream.encode(event("b", 1, offset=9, epoch="e2"))
    last = parse(stream.encode(event("a", 2, offset=5)))[0]
    assert decode_id(last["id"]) == {"a": Position(5, "e1"), "b": Position(9, "e2")}


def test_a_recovered_ack_keeps_the_clients_position_until_the_replay_moves_it() -> None:
    stream = EventStream({"a": Position(3, "e1")})
    out = parse(
        stream.encode(
            protocol.ack(
                "r", {"channel": "a", "offset": 50, "epoch": "e1", "recovered": True}
            ).encode()
        )
    )
    assert decode_id(out[0]["id"]) == {"a": Position(3, "e1")}  # not 50: 4..50 are owed
    out = parse(stream.encode(event("a", 0, offset=4)))
    assert decode_id(out[0]["id"]) == {"a": Position(4, "e1")}


def test_reconnect_sets_the_retry_and_close_is_the_last_event() -> None:
    stream = EventStream()
    out = stream.encode(protocol.reconnect("tok", 250, "rollout").encode())
    assert out.startswith(b"retry: 250\n")
    assert parse(EventStream.closing(1001, "rollout")) == [
        {"event": "close", "data": '{"type":"close","payload":{"code":1001,"reason":"rollout"}}'}
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("nonsense", "not an id this edge wrote"),
        ("1.!!!", "not an id this edge wrote"),
        ("1." + base64.urlsafe_b64encode(b"[1]").decode(), "not an id this edge wrote"),
        ("1." + base64.urlsafe_b64encode(b'{"a":[-1,"e"]}').decode(), "bad position for 'a'"),
        ("1." + base64.urlsafe_b64encode(b'{"a..b":[1,"e"]}').decode(), "bad position"),
        ("1." + "A" * 20_000, "longer than"),
    ],
)
def test_a_last_event_id_this_edge_did_not_write_is_refused(text: str, why: str) -> None:
    with pytest.raises(BadEventId, match=why):
        decode_id(text)


def test_ids_round_trip() -> None:
    positions = {"chat:lobby": Position(12, "2026-11-30T08:00:00+00:00"), "x": Position(0, "e")}
    assert decode_id(encode_id(positions).decode()) == positions
    assert encode_id(positions).isascii()


def test_frame_type_reads_the_type_written_first() -> None:
    assert frame_type(protocol.ack("1").encode()) == b"ack"
    with pytest.raises(ValueError, match="not a server frame"):
        frame_type(b'{"id":"1"}')


def request(path: str, **headers: str) -> HttpRequest:
    return HttpRequest("GET", path, RequestHeaders(headers.items()))


def test_the_stream_request_reads_channels_and_last_event_id() -> None:
    last = encode_id({"a": Position(7, "e")}).decode()
    wanted = read_stream_request(
        request("/v1/sse?channel=a&channel=b&channel=a", **{"Last-Event-ID": last}), 8
    )
    assert wanted == StreamRequest(["a", "b"], {"a": Position(7, "e")})
    assert read_stream_request(
        request(f"/v1/sse?channel=a&lastEventId={last}"), 8
    ) == StreamRequest(["a"], {"a": Position(7, "e")})
    too_many = read_stream_request(request("/v1/sse?channel=a&channel=b"), 1)
    assert too_many == Refusal(400, "at most 1 channels per stream")
    bad = read_stream_request(request("/v1/sse?channel=a..b"), 8)
    assert isinstance(bad, Refusal) and "invalid channel name 'a..b'" in bad.reason


def test_subscriptions_take_last_event_id_before_a_resume_tokens_positions() -> None:
    wanted = StreamRequest(["a", "b"], {"a": Position(7, "e")})
    resume = [
        {"channel": "a", "offset": 3, "epoch": "e"},
        {"channel": "c", "offset": 1, "epoch": "f"},
    ]
    assert subscriptions_for(wanted, resume) == [
        {"channel": "a", "offset": 7, "epoch": "e"},
        {"channel": "b", "offset": None, "epoch": None},
        {"channel": "c", "offset": 1, "epoch": "f"},
    ]


@pytest.mark.parametrize(
    "data",
    [
        {"text": 'looks like ,"offset":99,"epoch":"x"}} inside'},
        '"offset":7',
        [1, {"epoch": "e9", "offset": 5}],
        None,
    ],
)
def test_a_stored_events_position_is_read_whatever_its_data_holds(data: object) -> None:
    """Offsets are read from the frame's end without decoding `data`: the same as decoding."""
    stream = EventStream()
    frame = protocol.event_frame(
        "chat:x", data, ts=1, sender="a", extra={"offset": 41, "epoch": "2026-01-01T00:00:00+00:00"}
    ).encode()
    out = parse(stream.encode(frame))[0]
    assert decode_id(out["id"]) == {"chat:x": Position(41, "2026-01-01T00:00:00+00:00")}
    other = b'{"type":"event","payload":{"offset":3,"epoch":"e","channel":"y","data":1}}'
    assert decode_id(parse(stream.encode(other))[0]["id"])["y"] == Position(3, "e")
