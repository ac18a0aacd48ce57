"""Client frames parse into typed messages (edge.protocol), or a ProtocolError
that names what is wrong: the table every transport's input goes through."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.protocol import (
    Position,
    PresenceMessage,
    ProtocolError,
    PublishMessage,
    RefreshMessage,
    RpcMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    parse_message,
)
from switchboard.contract.codes import ErrorCode


def frame(kind: str, **payload: Any) -> str:
    return json.dumps({"type": kind, "id": "7", "payload": payload})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (frame("subscribe", channel="chat:lobby"), SubscribeMessage("7", "chat:lobby")),
        (
            frame("subscribe", channel="c", since={"offset": 4, "epoch": "e1"}),
            SubscribeMessage("7", "c", Position(4, "e1")),
        ),
        (frame("unsubscribe", channel="c"), UnsubscribeMessage("7", "c")),
        (frame("publish", channel="c", data=None), PublishMessage("7", "c", None)),
        (
            frame("publish", channel="c", data=[1], msg_id="m-1"),
            PublishMessage("7", "c", [1], "m-1"),
        ),
        (frame("rpc", method="orders.get", data={"n": 1}), RpcMessage("7", "orders.get", {"n": 1})),
        (frame("rpc", method="m", timeout_ms=50), RpcMessage("7", "m", None, 50)),
        (frame("presence", channel="c"), PresenceMessage("7", "c")),
        (frame("refresh", token="t"), RefreshMessage("7", "t")),
    ],
)
def test_frames_parse_into_typed_messages(text: str, message: object) -> None:
    assert parse_message(text) == message


@pytest.mark.parametrize(
    ("text", "code", "says"),
    [
        ("[1]", ErrorCode.BAD_REQUEST, "JSON object"),
        ('{"type": "shout"}', ErrorCode.UNKNOWN_TYPE, "unknown type 'shout'"),
        (frame("subscribe"), ErrorCode.BAD_REQUEST, "missing field 'channel'"),
        (frame("subscribe", channel="a b"), ErrorCode.BAD_REQUEST, "invalid channel name"),
        (frame("subscribe", channel="c", since={"offset": -1}), ErrorCode.BAD_REQUEST, "since"),
        (frame("subscribe", channel="c", since={"offset": 1}), ErrorCode.BAD_REQUEST, "epoch"),
        (frame("publish", channel="c"), ErrorCode.BAD_REQUEST, "missing field 'data'"),
        (frame("publish", channel="c", data=1, msg_id=5), ErrorCode.BAD_REQUEST, "msg_id"),
        (frame("publish", channel="c", data=1, msg_id=""), ErrorCode.BAD_REQUEST, "msg_id"),
        (
            frame("publish", channel="c", data=1, msg_id="a\r\nX: y"),
            ErrorCode.BAD_REQUEST,
            "msg_id",
        ),
        (frame("publish", channel="c", data=1, msg_id=" a"), ErrorCode.BAD_REQUEST, "msg_id"),
        (frame("publish", channel="c", data=1, msg_id="x" * 129), ErrorCode.BAD_REQUEST, "msg_id"),
        (frame("rpc", method="a..b"), ErrorCode.BAD_REQUEST, "invalid method name"),
        (frame("rpc", method="m", timeout_ms="5"), ErrorCode.BAD_REQUEST, "timeout_ms"),
        (frame("refresh"), ErrorCode.BAD_REQUEST, "missing field 'token'"),
    ],
)
def test_bad_frames_get_an_error_that_names_the_problem(
    text: str, code: ErrorCode, says: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_message(text)
    assert caught.value.code is code
    assert says in caught.value.message
