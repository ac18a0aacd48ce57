"""The client port's socket layer (`edge.transport`, `edge.http`) on real sockets, with a
handler that records what the transport hands it: HTTP answers, refusals of broken
requests, the WebSocket after the 101 (frames both ways, fragments, UTF-8, pings,
the closing handshake, max size), deadlines, backpressure, and a streamed response.

WebSocket clients are websockets' own; raw requests are written byte by byte where
a client library would not send them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from edge.http import (
    HeadParser,
    HttpRequest,
    RequestHeaders,
    plain_response,
    websocket_accept,
)
from edge.transport import ClientPort, ClientSocket

SUBPROTOCOL = "switchboard.v1"


@dataclass
class Owner:
    """A WebSocket's owner that records everything it is told."""

    texts: list[str] = field(default_factory=list)
    binaries: list[bytes] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    writable: int = 0
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    got: asyncio.Event = field(default_factory=asyncio.Event)

    def on_text(self, text: str) -> None:
        self.texts.append(text)
        self.got.set()

    def on_binary(self, data: bytes) -> None:
        self.binaries.append(data)
        self.got.set()

    def on_pong(self, data: bytes) -> None:
        self.pongs.append(data)
        self.got.set()

    def on_writable(self) -> None:
        self.writable += 1

    def on_lost(self) -> None:
        self.lost.set()


class Handler:
    """`/ws` upgrades (welcome first), `/refuse` in band, `/stream` streams; else 200."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []
        self.sockets: list[ClientSocket] = []
        self.owners: list[Owner] = []
        self.on_request: Callable[[ClientSocket, HttpRequest], bool] | None = None

    def handle_request(self, sock: ClientSocket, request: HttpRequest) -> None:
        self.requests.append(request)
        self.sockets.append(sock)
        if self.on_request is not None and self.on_request(sock, request):
            return
        if request.path.startswith("/ws") or request.path.startswith("/refuse"):
            head = sock.handshake(request, SUBPROTOCOL)
            if isinstance(head, Response):
                sock.respond(head)
            elif request.path.startswith("/refuse"):
                sock.refuse_in_band(head, 4001, "token expired")
            else:
                owner = Owner()
                self.owners.append(owner)
                sock.accept_websocket(head, owner, first_text=b'{"type":"welcome"}')
            return
        sock.respond(plain_response(200, f"{request.method} {request.path}\n"))


@dataclass
class Port:
    handler: Handler
    port: ClientPort
    server: asyncio.Server

    @property
    def number(self) -> int:
        return int(next(iter(self.server.sockets)).getsockname()[1])

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.number}/ws"

    async def raw(self, data: bytes) -> bytes:
        """Write `data`, then read until the server closes."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.number)
        writer.write(data)
        try:
            return await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()


@pytest.fixture
async def port() -> AsyncIterator[Port]:
    handler = Handler()
    client_port = ClientPort(
        handler, max_message_bytes=1024, close_timeout_s=0.5, handshake_timeout_s=0.5
    )
    server = await client_port.listen("127.0.0.1", 0)
    expiry = asyncio.create_task(client_port.expire_forever(0.05))
    yield Port(handler, client_port, server)
    expiry.cancel()
    server.close()


def key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def upgrade(path: str = "/ws", *extra: str, key_value: str | None = None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key_value or key()}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- plain HTTP ---------------------------------------------------------------------------


async def test_a_plain_request_gets_one_response_and_the_connection_ends(port: Port) -> None:
    answer = await port.raw(b"GET /healthz?x=1 HTTP/1.1\r\nHost: t\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(b"\r\n\r\nGET /healthz?x=1\n")
    request = port.handler.requests[0]
    assert (request.method, request.path, request.version) == ("GET", "/healthz?x=1", "1.1")
    assert request.headers.get_all("X-A") == ["1", "2"]
    assert not request.upgrade


async def test_an_answer_ends_the_connection_at_once_unless_the_client_sent_more(
    port: Port,
) -> None:
    """The socket closes as soon as the answer is out (no fd waits on the client), except
    when unread bytes would turn that close into a reset: then it half-closes and the
    client gets the close timeout to close its side."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port.number)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"GET /healthz\n")
    assert port.port.closing == {}  # closed, not waiting for this client
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port.number)
    writer.write(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 400 ")
    assert len(port.port.closing) == 1  # half-closed, waiting for the client
    writer.close()


async def test_a_request_split_across_many_packets_is_parsed(port: Port) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port.number)
    for byte in b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n":
        writer.write(bytes([byte]))
        await writer.drain()
    assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"GET /slow\n")
    writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"GET /x HTTP/1.1\r\nHost : t\r\n\r\n", 400, b"malformed request"),
        (b"GET /x\xff HTTP/1.1\r\n\r\n", 400, b"malformed request"),
        (b"BREW /x HTTP/1.1\r\n\r\n", 400, b"malformed request"),
        (b"GET /x HTTP/2.0\r\n\r\n", 400, b"unsupported HTTP version 2.0"),
        (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 400, b"request bodies are not"),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, b"bodies"),
        (b"GET /x HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, b"request head too large"),
        (
            b"GET /x HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n",
            431,
            b"too many headers",
        ),
    ],
)
async def test_requests_the_edge_cannot_serve_are_refused_with_a_reason(
    port: Port, request_bytes: bytes, status: int, reason: bytes
) -> None:
    answer = await port.raw(request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    assert reason in answer
    assert port.handler.requests == []  # the handler never saw it


async def test_a_content_length_of_zero_is_no_body(port: Port) -> None:
    answer = await port.raw(b"POST /v1/tickets HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert answer.endswith(b"POST /v1/tickets\n")


@pytest.fixture
async def body_port() -> AsyncIterator[Port]:
    """A port that reads POST bodies of up to 100 bytes (`POST /v1/messages`)."""
    handler = Handler()
    client_port = ClientPort(
        handler,
        max_message_bytes=1024,
        max_body_bytes=100,
        close_timeout_s=0.5,
        handshake_timeout_s=0.5,
    )
    server = await client_port.listen("127.0.0.1", 0)
    expiry = asyncio.create_task(client_port.expire_forever(0.05))
    yield Port(handler, client_port, server)
    expiry.cancel()
    server.close()


async def test_a_post_body_within_the_limit_is_read_whole_across_packets(
    body_port: Port,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", body_port.number)
    writer.write(b"POST /m HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"a" * 40)
    await writer.drain()
    await asyncio.sleep(0.05)
    assert body_port.handler.requests == []  # the handler waits for the whole body
    writer.write(b"b" * 60)
    assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"POST /m\n")
    assert body_port.handler.requests[0].body == b"a" * 40 + b"b" * 60
    assert body_port.port.closing == {}  # nothing unread: closed at once
    writer.close()
    answer = await body_port.raw(b"POST /m HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert answer.endswith(b"POST /m\n") and body_port.handler.requests[1].body == b"abc"


async def test_a_client_that_expects_100_continue_gets_it_before_sending_the_body(
    body_port: Port,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", body_port.number)
    writer.write(b"POST /m HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"POST /m\n")
    assert body_port.handler.requests[0].body == b"ok"
    writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (
            b"POST /m HTTP/1.1\r\nContent-Length: 101\r\n\r\n",
            413,
            b"the body is 101 bytes; at most 100",
        ),
        (
            b"POST /m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            411,
            b"Content-Length (not chunked)",
        ),
        (b"GET /m HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 400, b"request bodies are not"),
        (
            b"POST /m HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            400,
            b"",
        ),
    ],
)
async def test_bodies_the_edge_does_not_read_are_refused_before_the_handler(
    body_port: Port, request_bytes: bytes, status: int, reason: bytes
) -> None:
    answer = await body_port.raw(request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    assert reason in answer
    assert body_port.handler.requests == []


async def test_a_handshake_that_never_completes_is_aborted(port: Port) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port.number)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: t\r\n")  # and nothing more
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after ~0.5 s
    writer.close()
    assert port.port.opening == {}


async def test_a_handler_that_answers_late_still_answers(port: Port) -> None:
    def later(sock: ClientSocket, request: HttpRequest) -> bool:
        asyncio.get_running_loop().call_later(
            0.1, sock.respond, plain_response(503, "later\n", {"Retry-After": "1"})
        )
        return True

    port.handler.on_request = later
    answer = await port.raw(b"GET /ws HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 1\r\n" in answer


# -- the WebSocket handshake ----------------------------------------------------------------


async def test_a_handshake_is_answered_101_with_the_subprotocol_and_the_first_frame(
    port: Port,
) -> None:
    async with connect(port.ws, subprotocols=["other", SUBPROTOCOL]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == SUBPROTOCOL
        assert await ws.recv() == '{"type":"welcome"}'
    async with connect(port.ws, subprotocols=["other"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol is None  # not offered: none selected
        assert ws.response is not None
        assert "Sec-WebSocket-Protocol" not in ws.response.headers


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (upgrade(key_value="not-base64"), 400, b"Sec-WebSocket-Key"),
        (b"GET /ws HTTP/1.1\r\nHost: t\r\n\r\n", 426, b"Connection"),
        (b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", 426, b"Upgrade"),
        (upgrade().replace(b"HTTP/1.1", b"HTTP/1.0", 1), 505, b"HTTP/1.0"),
        (upgrade().replace(b"Version: 13", b"Version: 8"), 400, b"Sec-WebSocket-Version"),
        (upgrade().replace(b"GET", b"PUT", 1), 405, b"PUT"),
        (upgrade("/ws", "Sec-WebSocket-Protocol: a b"), 400, b"Sec-WebSocket-Protocol"),
    ],
)
async def test_broken_handshakes_get_websockets_own_answers(
    port: Port, request_bytes: bytes, status: int, reason: bytes
) -> None:
    answer = await port.raw(request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:120]
    assert reason in answer, answer
    assert b"Failed to open a WebSocket connection" in answer


async def test_frames_sent_with_the_upgrade_request_are_not_lost(port: Port) -> None:
    frame = Frame(Opcode.TEXT, b"early").serialize(mask=True, extensions=[])
    reader, writer = await asyncio.open_connection("127.0.0.1", port.number)
    writer.write(upgrade() + frame)
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    owner = port.handler.owners[0]
    await asyncio.wait_for(owner.got.wait(), 5)
    assert owner.texts == ["early"]
    writer.close()


def select(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


def test_the_fast_handshake_agrees_with_websockets() -> None:
    """Whenever `websocket_accept` answers, websockets would have answered 101 with
    the same key and subprotocol; whatever it declines goes to websockets anyway."""
    good_key = key()
    variants: list[list[tuple[str, str]]] = []
    base = [
        ("Host", "t"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", good_key),
        ("Sec-WebSocket-Version", "13"),
    ]
    variants.append(base)
    variants.append([*base, ("Sec-WebSocket-Protocol", f"{SUBPROTOCOL}, bearer.a.b-c_d")])
    variants.append(
        [*base, ("Sec-WebSocket-Protocol", "x"), ("Sec-WebSocket-Protocol", SUBPROTOCOL)]
    )
    variants.append([*base, ("Sec-WebSocket-Protocol", "bearer.x")])
    variants.append([*base, ("Sec-WebSocket-Protocol", "a b")])
    variants.append([*base, ("Sec-WebSocket-Protocol", "a,,b")])
    variants.append([*base, ("Sec-WebSocket-Extensions", "permessage-deflate")])
    variants.append([*base, ("Origin", "https://a"), ("Origin", "https://b")])
    variants.append([(k, v) if k != "Connection" else (k, "keep-alive, Upgrade") for k, v in base])
    variants.append([(k, v) if k != "Connection" else (k, "close") for k, v in base])
    variants.append([(k, v) if k != "Upgrade" else (k, "WebSocket") for k, v in base])
    variants.append([(k, v) if k != "Upgrade" else (k, "websocket, h2c") for k, v in base])
    variants.append([*base, ("Upgrade", "websocket")])
    variants.append([(k, v) for k, v in base if k != "Sec-WebSocket-Key"])
    odd_key = good_key[:21] + "B=="  # decodes to 16 bytes, with trailing bits set
    variants.append([(k, v if k != "Sec-WebSocket-Key" else odd_key) for k, v in base])
    variants.append([(k, v if k != "Sec-WebSocket-Version" else "13, 8") for k, v in base])
    answered = 0
    for headers in variants:
        ours = websocket_accept(
            HttpRequest("GET", "/ws", RequestHeaders(headers), upgrade=True), SUBPROTOCOL
        )
        judge = ServerProtocol(select_subprotocol=select)
        theirs = judge.accept(Request("/ws", Headers(headers)))
        if ours is None:
            continue
        answered += 1
        assert theirs.status_code == 101, headers
        accept = base64.b64encode(
            hashlib.sha1(
                dict(headers)["Sec-WebSocket-Key"].encode()
                + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            ).digest()
        )
        assert f"Sec-WebSocket-Accept: {theirs.headers['Sec-WebSocket-Accept']}".encode() in ours
        assert b"Sec-WebSocket-Accept: " + accept in ours
        protocol = theirs.headers.get("Sec-WebSocket-Protocol")
        assert (b"Sec-WebSocket-Protocol: " + SUBPROTOCOL.encode() in ours) == (
            protocol is not None
        )
    assert answered >= 6


def test_head_parser_keeps_what_follows_an_upgrade() -> None:
    parser = HeadParser()
    assert parser.feed(upgrade()[:20]) is None
    got = parser.feed(upgrade()[20:] + b"\x81\x80rest")
    assert got is not None
    request, rest = got
    assert request.upgrade and rest == b"\x81\x80rest"


# -- the WebSocket -------------------------------------------------------------------------


async def test_messages_fragments_binary_and_pongs_reach_the_owner(port: Port) -> None:
    async with connect(port.ws) as ws:
        await ws.recv()
        owner = port.handler.owners[0]
        await ws.send("hello")
        await ws.send(["frag", "ment", "ed"])  # three frames, one message
        await ws.send(b"\x00\x01")
        await ws.send("ünïcode")
        sock = port.handler.sockets[0]
        assert sock.send_ping(b"p1")
        while len(owner.texts) < 3 or not owner.binaries or not owner.pongs:
            owner.got.clear()
            await asyncio.wait_for(owner.got.wait(), 5)
        assert owner.texts == ["hello", "fragmented", "ünïcode"]
        assert owner.binaries == [b"\x00\x01"]
        assert owner.pongs == [b"p1"]
        assert sock.send_text(b'{"type":"event"}')
        assert await ws.recv() == '{"type":"event"}'
        pong = await ws.ping(b"from client")  # answered by the protocol itself
        await asyncio.wait_for(pong, 5)


async def test_frames_of_every_length_encoding_arrive_whole(port: Port) -> None:
    """Frames are made by the transport itself: 7-bit, 16-bit and 64-bit lengths."""
    async with connect(port.ws, max_size=None) as ws:
        await ws.recv()
        sock = port.handler.sockets[0]
        for size in (0, 1, 125, 126, 127, 65535, 65536, 200_000):
            text = "é" * (size // 2) + "x" * (size % 2)
            assert sock.send_text(text.encode())
            assert await ws.recv() == text


async def test_the_client_closing_is_echoed_and_the_owner_told(port: Port) -> None:
    ws = await connect(port.ws)
    await ws.recv()
    await ws.close(1000, "bye")
    owner = port.handler.owners[0]
    await asyncio.wait_for(owner.lost.wait(), 5)
    assert port.handler.sockets[0].close_codes == (1000, 1000)  # sent (the echo), received
    assert ws.close_code == 1000
    assert ws.close_reason == "bye"
    assert not port.handler.sockets[0].send_text(b"late")  # closed: nothing is sent


async def test_the_server_closing_waits_for_the_echo(port: Port) -> None:
    async with connect(port.ws) as ws:
        await ws.recv()
        port.handler.sockets[0].close(4001, "token expired")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4001, "token expired")
    await asyncio.wait_for(port.handler.owners[0].lost.wait(), 5)


async def test_a_refusal_in_band_is_101_then_the_close(port: Port) -> None:
    async with connect(port.ws.replace("/ws", "/refuse")) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4001, "token expired")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (Frame(Opcode.TEXT, b"\xff\xfe"), 1007),
        (Frame(Opcode.TEXT, b"x" * 2000), 1009),  # over max_message_bytes (1024)
        (Frame(Opcode.CONT, b"x"), 1002),  # a continuation with nothing to continue
    ],
)
async def test_protocol_errors_close_with_their_codes(port: Port, frame: Frame, code: int) -> None:
    async with connect(port.ws) as ws:
        await ws.recv()
        ws.protocol.send_frame(frame)  # below websockets' own checks
        ws.send_data()
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == code
    await asyncio.wait_for(port.handler.owners[0].lost.wait(), 5)
    assert port.handler.owners[0].texts == []


async def test_a_fragmented_utf8_error_is_found_at_the_end(port: Port) -> None:
    async with connect(port.ws) as ws:
        await ws.recv()
        for fin, data in (
            (False, b"ok \xe2"),
            (True, b"\x82\xac fine"),
            (False, b"\xe2"),
            (True, b"x"),
        ):
            opcode = Opcode.TEXT if not ws.protocol.expect_continuation_frame else Opcode.CONT
            ws.protocol.send_frame(Frame(opcode, data, fin))
            ws.protocol.expect_continuation_frame = not fin
            ws.send_data()
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1007
    assert port.handler.owners[0].texts == ["ok € fine"]


async def test_a_peer_that_does_not_finish_the_closing_handshake_is_aborted(port: Port) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port.number)
    writer.write(upgrade())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    port.handler.sockets[0].close(1001, "going away")
    # this client reads but never answers the close frame: aborted after ~0.5 s
    await asyncio.wait_for(port.handler.owners[0].lost.wait(), 5)
    writer.close()
    assert port.port.closing == {}


def paused(sock: ClientSocket) -> bool:
    return sock.paused


async def test_backpressure_pauses_writes_until_the_peer_reads(port: Port) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port.number, limit=1 << 24)
    writer.write(upgrade())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    sock, owner = port.handler.sockets[0], port.handler.owners[0]
    chunk = b"x" * 60_000
    sent = 0
    while not paused(sock) and sent < 2000:  # the peer does not read: buffers fill
        assert sock.send_text(chunk)
        sent += 1
    assert paused(sock)
    assert owner.writable == 0
    received = 0
    while owner.writable == 0:
        received += len(await asyncio.wait_for(reader.read(1 << 20), 5))
    assert not paused(sock)
    assert received > 0
    writer.close()


# -- a streamed response (the shape of text/event-stream) --------------------------------------


class StreamOwner:
    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.writable = 0

    def on_writable(self) -> None:
        self.writable += 1

    def on_lost(self) -> None:
        self.lost.set()


async def test_a_streamed_response_is_written_piece_by_piece(port: Port) -> None:
    owners: list[StreamOwner] = []

    def stream(sock: ClientSocket, request: HttpRequest) -> bool:
        if request.path != "/events":
            return False
        owner = StreamOwner()
        owners.append(owner)
        sock.stream(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
            owner,
        )
        sock.write(b"data: 1\n\n")
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, sock.write, b"data: 2\n\n")
        loop.call_later(0.1, sock.finish)
        return True

    port.handler.on_request = stream
    answer = await port.raw(b"GET /events HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n")
    assert answer.endswith(b"\r\n\r\ndata: 1\n\ndata: 2\n\n")
    await asyncio.wait_for(owners[0].lost.wait(), 5)

    # the client leaving ends the stream: its owner hears of it
    reader, writer = await asyncio.open_connection("127.0.0.1", port.number)
    writer.write(b"GET /events HTTP/1.1\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"data: 1\n\n"), 5)
    writer.close()
    await asyncio.wait_for(owners[1].lost.wait(), 5)
    assert port.handler.sockets[-1].closed


async def test_refusals_over_a_real_client(port: Port) -> None:
    def refuse(sock: ClientSocket, request: HttpRequest) -> bool:
        sock.respond(plain_response(429, "too many new connections\n", {"Retry-After": "1"}))
        return True

    port.handler.on_request = refuse
    with pytest.raises(InvalidStatus) as refused:
        await connect(port.ws)
    response = refused.value.response
    assert (response.status_code, response.headers["Retry-After"]) == (429, "1")
    assert response.body == b"too many new connections\n"
