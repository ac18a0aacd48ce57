"""`ClientSocket._fast_frame` against websockets' own protocol, byte for byte.

A WebSocket handles the small frames most connections send (one text, close, ping
or pong, final and masked, up to 125 bytes, alone in a read) without making
websockets' `ServerProtocol`; anything else goes to that protocol, made then. Each
case here feeds the same client bytes to two sockets, one taking the fast path and
one whose protocol was made first (so websockets parses everything), and requires
the same bytes written, the same half-close, the same messages handed over, the
same close codes and the same answers to what the server does next.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from edge.http import HttpRequest
from edge.transport import ClientPort, ClientSocket, Phase


class Transport:
    """Records what a socket writes, and how it ends."""

    def __init__(self) -> None:
        self.out: list[bytes | str] = []

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.out.append("EOF")

    def is_closing(self) -> bool:
        return "EOF" in self.out or "CLOSE" in self.out or "ABORT" in self.out

    def close(self) -> None:
        self.out.append("CLOSE")

    def abort(self) -> None:
        self.out.append("ABORT")

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@dataclass
class Owner:
    events: list[tuple[str, Any]] = field(default_factory=list)

    def on_text(self, text: str) -> None:
        self.events.append(("text", text))

    def on_binary(self, data: bytes) -> None:
        self.events.append(("binary", data))

    def on_pong(self, data: bytes) -> None:
        self.events.append(("pong", data))

    def on_writable(self) -> None:
        pass

    def on_lost(self) -> None:
        self.events.append(("lost", None))


class Handler:
    def handle_request(self, sock: ClientSocket, request: HttpRequest) -> None:
        raise AssertionError("not used: the sockets are opened directly")


def masked(opcode: Opcode, data: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client's frame as it is on the wire (made here: websockets' own serializer
    refuses to make the broken ones)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode.value
    size = len(data)
    if size < 126:
        length = bytes((0x80 | size,))
    elif size < 65536:
        length = bytes((0xFE,)) + size.to_bytes(2, "big")
    else:
        length = bytes((0xFF,)) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    return bytes((first,)) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def unmasked(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=False)


TEXT, CLOSE, PING, PONG = Opcode.TEXT, Opcode.CLOSE, Opcode.PING, Opcode.PONG
WHOLE = masked(TEXT, b"whole")

CASES: dict[str, list[bytes]] = {
    "empty text": [masked(TEXT, b"")],
    "short text": [masked(TEXT, b'{"type":"subscribe","id":"1","payload":{}}')],
    "125 bytes": [masked(TEXT, b"x" * 125)],
    "126 bytes (16-bit length)": [masked(TEXT, b"y" * 126)],
    "UTF-8 text": [masked(TEXT, "héllo wörld ✓ 🎉".encode())],
    "invalid UTF-8": [masked(TEXT, b"ok\xff\xfe")],
    "UTF-8 cut in the middle": [masked(TEXT, "✓".encode()[:2])],
    "over max_message_bytes": [masked(TEXT, b"z" * 100)],
    "binary": [masked(Opcode.BINARY, b"\x00\x01")],
    "close, empty": [masked(CLOSE, b"")],
    "close 1000": [masked(CLOSE, b"\x03\xe8")],
    "close 1000 bye": [masked(CLOSE, b"\x03\xe8bye")],
    "close 1001 long reason": [masked(CLOSE, b"\x03\xe9" + b"r" * 123)],
    "close 3000": [masked(CLOSE, (3000).to_bytes(2, "big"))],
    "close 4999": [masked(CLOSE, (4999).to_bytes(2, "big") + b"x")],
    "close 1005 on the wire": [masked(CLOSE, (1005).to_bytes(2, "big"))],
    "close 999": [masked(CLOSE, (999).to_bytes(2, "big"))],
    "close 5000": [masked(CLOSE, (5000).to_bytes(2, "big"))],
    "close, one byte": [masked(CLOSE, b"\x03")],
    "close, bad UTF-8 reason": [masked(CLOSE, b"\x03\xe8\xff")],
    "ping": [masked(PING, b"")],
    "ping with data": [masked(PING, b"are you there")],
    "pong": [masked(PONG, b"\x00\x00\x00\x00\x00\x00\x00\x07")],
    "unmasked text": [unmasked(TEXT, b"no mask")],
    "unmasked close": [unmasked(CLOSE, b"\x03\xe8")],
    "rsv1 set": [masked(TEXT, b"compressed?", rsv1=True)],
    "reserved opcode": [bytes((0x83, 0x80)) + os.urandom(4)],
    "fragments": [masked(TEXT, b"he", fin=False), masked(Opcode.CONT, b"llo")],
    "a continuation alone": [masked(Opcode.CONT, b"lost")],
    "a fragmented ping": [masked(PING, b"p", fin=False)],
    "two frames in one read": [WHOLE + masked(TEXT, b"second")],
    "a frame in two reads": [WHOLE[:3], WHOLE[3:]],
    "text then close": [masked(TEXT, b"last words"), masked(CLOSE, b"\x03\xe8")],
    "close then text": [masked(CLOSE, b"\x03\xe8"), masked(TEXT, b"after the close")],
    "close then close": [masked(CLOSE, b"\x03\xe8"), masked(CLOSE, b"\x03\xe9")],
    "ping, pong, text": [masked(PING, b"1"), masked(PONG, b"2"), masked(TEXT, b"3")],
    "a short read": [b"\x81"],
}


async def run(chunks: list[bytes], fast: bool, then: str) -> dict[str, Any]:
    """Feed `chunks` to an open WebSocket; then what the server does next."""
    port = ClientPort(Handler(), max_message_bytes=64)
    sock = ClientSocket(port)
    transport = Transport()
    sock.connection_made(transport)  # type: ignore[arg-type]
    sock.phase = Phase.ANSWERING  # as the port's handler has it
    owner = Owner()
    sock.accept_websocket(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", owner)
    if not fast:
        sock._protocol()  # websockets parses from the first byte
    for chunk in chunks:
        sock.data_received(chunk)
    if then == "send":
        sent = sock.send_text(b"from the server")
    elif then == "ping":
        sent = sock.send_ping(b"\x00\x00\x00\x00\x00\x00\x00\x01")
    elif then == "close":
        sock.close(1001, "going away")
        sent = None
    else:
        sock.eof_received()
        sent = None
    codes = sock.close_codes
    closing = sock in port.closing
    sock.connection_lost(None)
    return {
        "written": transport.out,
        "events": owner.events,
        "codes": codes,
        "deadline": closing,
        "sent": sent,
        "after": sock.send_text(b"after lost"),
    }


@pytest.mark.parametrize("then", ["send", "ping", "close", "eof"])
@pytest.mark.parametrize("case", list(CASES))
async def test_the_fast_path_answers_as_websockets_does(case: str, then: str) -> None:
    chunks = CASES[case]
    fast, reference = await run(chunks, True, then), await run(chunks, False, then)
    assert fast == reference


async def test_most_connections_never_make_a_protocol() -> None:
    """What a reconnect storm's connection does (welcome, a subscribe, a pong, the
    client's close) needs no websockets protocol object at all."""
    port = ClientPort(Handler(), max_message_bytes=65536)
    sock = ClientSocket(port)
    sock.connection_made(Transport())  # type: ignore[arg-type]
    sock.phase = Phase.ANSWERING
    owner = Owner()
    sock.accept_websocket(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", owner, first_text=b"{}")
    assert sock.send_ping(b"12345678")
    for frame in (masked(TEXT, b'{"type":"subscribe"}'), masked(PONG, b"12345678")):
        sock.data_received(frame)
    sock.data_received(masked(CLOSE, b"\x03\xe8"))
    sock.connection_lost(None)
    assert sock.protocol is None
    assert owner.events == [("text", '{"type":"subscribe"}'), ("pong", b"12345678"), ("lost", None)]
    assert sock.close_codes == (1000, 1000)
    await asyncio.sleep(0)
