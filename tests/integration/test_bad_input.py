"""Every bad input of DESIGN §3 over a real socket, with its exact answer."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from switchboard.client import Client
from tests.conftest import Edge, token


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            "{oops",
            {
                "type": "error",
                "payload": {"code": "bad_request", "message": "malformed JSON", "retryable": False},
            },
        ),
        (
            "[]",
            {
                "type": "error",
                "payload": {
                    "code": "bad_request",
                    "message": "a message must be a JSON object",
                    "retryable": False,
                },
            },
        ),
        (
            '{"type":"fly","id":"a"}',
            {
                "type": "error",
                "id": "a",
                "payload": {
                    "code": "unknown_type",
                    "message": "unknown type 'fly'",
                    "retryable": False,
                },
            },
        ),
        (
            '{"type":"publish","id":"b","payload":{"channel":"c"}}',
            {
                "type": "error",
                "id": "b",
                "payload": {
                    "code": "bad_request",
                    "message": "missing field 'data'",
                    "retryable": False,
                },
            },
        ),
        (
            '{"type":"subscribe","id":"c","payload":{"channel":"no.dots"}}',
            {
                "type": "error",
                "id": "c",
                "payload": {
                    "code": "bad_request",
                    "message": "invalid channel name: use [A-Za-z0-9_-] segments joined by ':'",
                    "retryable": False,
                },
            },
        ),
    ],
)
async def test_bad_frames_get_error_frames_and_connection_survives(
    edge1: Edge, frame: str, expected: dict[str, object]
) -> None:
    client = await Client.connect(edge1.ws_url, token=token("alice"))
    await client.send_raw(frame)
    assert await client.next_message() == expected
    assert await client.subscribe("still:alive")  # the connection keeps working
    await client.close()


async def test_binary_frame_closes_1003(edge1: Edge) -> None:
    client = await Client.connect(edge1.ws_url, token=token("alice"))
    await client.send_raw(b"\x00\x01")
    assert await client.wait_closed() == 1003


async def test_invalid_utf8_closes_1007(edge1: Edge) -> None:
    async with connect(edge1.ws_url, subprotocols=["switchboard.v1", f"bearer.{token()}"]) as ws:  # type: ignore[list-item]
        await ws.recv()  # welcome
        # a text frame whose payload is not UTF-8, written below websockets' own checks
        ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
        ws.send_data()
        await ws.wait_closed()
        assert ws.close_code == 1007


async def test_oversized_message_closes_1009(edge1: Edge) -> None:
    client = await Client.connect(edge1.ws_url, token=token("alice"))
    big = json.dumps({"type": "publish", "payload": {"channel": "c", "data": "x" * 70_000}})
    await client.send_raw(big)
    assert await client.wait_closed() == 1009


async def test_repeated_abuse_closes_1008(edge1: Edge) -> None:
    client = await Client.connect(edge1.ws_url, token=token("alice"))
    for _ in range(10):
        await client.send_raw("garbage")
    errors = [await client.next_message() for _ in range(10)]
    assert all(e["payload"]["code"] == "bad_request" for e in errors)
    assert await client.wait_closed() == 1008


async def test_rate_limit_abuse_gets_rate_limited_then_1008(edge1: Edge, edge2: Edge) -> None:
    bystander = await Client.connect(edge1.ws_url, token=token("bob"))
    await bystander.subscribe("flood:x")
    client = await Client.connect(edge1.ws_url, token=token("alice"))
    frame = json.dumps({"type": "publish", "payload": {"channel": "flood:x", "data": 1}})
    for _ in range(400):  # burst 200, then over 100/s
        if client.close_code is not None:
            break
        try:
            await client.send_raw(frame)
        except Exception:
            break
    codes = []
    async for msg in client.events():
        if msg["type"] == "error":
            codes.append(msg["payload"]["code"])
    assert "rate_limited" in codes
    assert client.close_code == 1008
    # the bystander is unaffected: it got what was accepted and still works
    assert await bystander.publish("flood:x", "still fine")
    await bystander.close()
