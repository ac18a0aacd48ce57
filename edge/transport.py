"""The client port's sockets: one lean `asyncio.Protocol` per TCP connection.

A connection starts as HTTP. Its request head is parsed (`edge.http`) and handed
to the port's handler (`edge.server`), which answers it in one of three ways:

- `respond(response)`: one HTTP response, then the connection ends;
- `accept_websocket(head, owner)`: the 101, then WebSocket frames through
  websockets' sans-I/O `ServerProtocol` (created in the OPEN state), to and
  from `owner` (`edge.connection`);
- `stream(head, owner)`: a long-lived response written piece by piece (the
  shape of a `text/event-stream`), until `finish()` or the peer leaves.

Why not `websockets.asyncio.server`: per connection it keeps a handler task, a
message assembler with its deques and futures, and parses the upgrade in pure
Python. Here a connection is this object, the asyncio transport and the
`ServerProtocol`; nothing runs between frames. Flow control is asyncio's
`pause_writing`/`resume_writing`; keepalive pings are sent from the edge's sweep.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from typing import Protocol, cast

from websockets.exceptions import ProtocolError as WebSocketProtocolError
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import Protocol as WebSocketProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask  # websockets' C unmasking (its frames use it)
from websockets.typing import Subprotocol

from edge.http import (
    HeadParser,
    HttpError,
    HttpRequest,
    plain_response,
    serialize,
    websocket_accept,
)
from switchboard.contract.codes import CloseCode

log = logging.getLogger("switchboard.edge.transport")
ws_log = logging.getLogger("websockets.server")  # what websockets' own server logs to

TEXT, BINARY, CONT, PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG
OPEN = State.OPEN
_SHORT_TEXT_HEADERS = [bytes((0x81, size)) for size in range(126)]  # FIN + text, length


def text_frame(data: bytes) -> bytes:
    """A server's text frame (unmasked, one fragment, no extension)."""
    size = len(data)
    if size < 126:
        return _SHORT_TEXT_HEADERS[size] + data
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + data
    return b"\x81\x7f" + size.to_bytes(8, "big") + data


class WebSocketOwner(Protocol):
    """Who a WebSocket's frames go to (`edge.connection.Connection`)."""

    def on_text(self, text: str) -> None:
        """A complete text message (valid UTF-8)."""

    def on_binary(self, data: bytes) -> None:
        """A complete binary message."""

    def on_pong(self, data: bytes) -> None: ...

    def on_writable(self) -> None:
        """The transport took its buffered data: writing may go on."""

    def on_lost(self) -> None:
        """The TCP connection is gone (closed or aborted); called once."""


class StreamOwner(Protocol):
    """Who writes a long-lived HTTP response (`ClientSocket.stream`)."""

    def on_writable(self) -> None: ...

    def on_lost(self) -> None: ...


class RequestHandler(Protocol):
    """Decides each request of the port (`edge.server.EdgeServer`)."""

    def handle_request(self, sock: ClientSocket, request: HttpRequest) -> None:
        """Answer `request` now or later: `respond`, `accept_websocket`, `stream`."""


class Phase(enum.Enum):
    HEAD = "head"  # reading the request head
    ANSWERING = "answering"  # the handler has the request
    WEBSOCKET = "websocket"
    STREAM = "stream"
    DONE = "done"  # answered; waiting for the peer to close
    CLOSED = "closed"


class OpenServerProtocol(ServerProtocol):
    """websockets' server protocol for a handshake already answered (made in the OPEN
    state): frames are parsed by `Protocol.parse` directly, without the generator of
    the opening handshake wrapped around it (one suspended frame, ~250 B, less per
    connection, and one `yield from` less per read)."""

    parse = WebSocketProtocol.parse


class ClientPort:
    """What the sockets of one listening port share: the handler, the limits, and
    the handshakes in progress (which get `handshake_timeout_s` to complete)."""

    def __init__(
        self,
        handler: RequestHandler,
        *,
        max_message_bytes: int,
        max_body_bytes: int = 0,
        # websockets' own default, which the edge had before this transport: a peer
        # slow to answer a close frame (a loaded phone, a busy client process) still
        # gets the close code instead of a reset that can discard it unread.
        close_timeout_s: float = 10.0,
        handshake_timeout_s: float = 10.0,
        write_limit: tuple[int, int] = (32 * 1024, 8 * 1024),
    ) -> None:
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.max_body_bytes = max_body_bytes  # a POST's body (0: none accepted)
        self.close_timeout_s = close_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.write_limit = write_limit
        # Sockets still in their opening handshake, oldest first (dicts keep order).
        self.opening: dict[ClientSocket, float] = {}
        # Sockets whose peer must close by a deadline (closing handshake, end of an
        # HTTP answer), else they are aborted: checked here instead of a timer each.
        self.closing: dict[ClientSocket, float] = {}
        self.loop = asyncio.get_running_loop()

    async def listen(self, host: str, port: int, *, backlog: int = 4096) -> asyncio.Server:
        return await self.loop.create_server(
            lambda: ClientSocket(self), host, port, backlog=backlog, reuse_address=True
        )

    def expire(self, now: float) -> int:
        """Abort sockets whose handshake took too long, or whose peer did not close in
        time; how many."""
        limit = now - self.handshake_timeout_s
        expired = []
        for sock, since in self.opening.items():
            if since > limit:
                break
            expired.append(sock)
        for sock in expired:
            del self.opening[sock]
        expired += [sock for sock, deadline in self.closing.items() if deadline <= now]
        for sock in expired:
            self.closing.pop(sock, None)
            sock.abort()
        return len(expired)

    async def expire_forever(self, period_s: float = 0.25) -> None:
        while True:
            await asyncio.sleep(period_s)
            self.expire(self.loop.time())


class ClientSocket(asyncio.Protocol):
    """One TCP connection of the client port: HTTP request head, then one answer."""

    __slots__ = (
        "_binary",
        "_closed_by_peer",
        "_early",
        "_fragments",
        "_owner",
        "_parser",
        "_port",
        "_unread",
        "paused",
        "phase",
        "protocol",
        "transport",
    )

    def __init__(self, port: ClientPort) -> None:
        self._port = port
        self._parser: HeadParser | None = HeadParser(port.max_body_bytes)
        self._owner: WebSocketOwner | StreamOwner | None = None
        self._early = b""  # bytes that came right after an upgrade request
        self._fragments: list[bytes] | None = None  # a fragmented message so far
        self._binary = False  # ... and whether it is binary
        self._unread = False  # the client sent more than the request head
        self.transport: asyncio.Transport | None = None
        # websockets' protocol, made when a WebSocket first needs it (see `_fast_frame`)
        self.protocol: ServerProtocol | None = None
        self._closed_by_peer: Close | None = None  # a close `_fast_frame` answered
        self.paused = False  # the transport's buffer is over its high-water mark
        self.phase = Phase.HEAD

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but behave as one)
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(*self._port.write_limit)
        self._port.opening[self] = self._port.loop.time()

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.WEBSOCKET:
            self._websocket_data(data)
        elif self.phase is Phase.HEAD:
            self._head_data(data)
        else:  # answering, streaming, done: a client's further bytes are not read
            self._unread = True

    def eof_received(self) -> bool:
        if self.phase is Phase.WEBSOCKET and (
            self.protocol is not None or self._closed_by_peer is None
        ):
            self._protocol().receive_eof()  # (websockets decides what an EOF means)
            self._write_pending()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        self._port.opening.pop(self, None)
        self._port.closing.pop(self, None)
        protocol = self.protocol
        if protocol is not None:
            if not protocol.reader.eof:
                protocol.receive_eof()  # the state becomes CLOSED, close codes are final
                protocol.data_to_send()
            # The protocol's parser is a generator that holds the protocol: closed, the
            # connection's objects are freed by reference counting, not by the collector.
            protocol.parser.close()
        if self._parser is not None:  # lost during the request head
            self._parser.close()
            self._parser = None
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.on_lost()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._owner is not None:
            self._owner.on_writable()

    # -- the request --------------------------------------------------------------

    @property
    def remote_address(self) -> tuple[str, int] | None:
        if self.transport is None:
            return None
        peer = self.transport.get_extra_info("peername")
        return (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def streaming(self) -> bool:
        """A streamed response is being written (`stream`, not finished, not lost)."""
        return self.phase is Phase.STREAM

    def _head_data(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        try:
            head = parser.feed(data)
        except HttpError as exc:
            parser.close()
            self._parser = None
            self._unread = True  # (what else it sent is not known)
            self.respond(plain_response(exc.status, f"{exc.reason}\n"))
            return
        if head is None:
            if parser.expects_continue:  # (curl waits 1 s for it before a larger body)
                parser.expects_continue = False
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        request, self._early = head
        self._unread = parser.more
        parser.close()
        self._parser = None
        self.phase = Phase.ANSWERING
        try:
            self._port.handler.handle_request(self, request)
        except HttpError as exc:
            self.respond(plain_response(exc.status, f"{exc.reason}\n"))
        except Exception:
            log.exception("request handler failed")
            self.respond(plain_response(500, "internal error\n"))

    # -- answers ----------------------------------------------------------------

    def respond(self, response: Response) -> None:
        """Send one HTTP response and end the connection."""
        if self.phase in (Phase.CLOSED, Phase.DONE):
            return
        self._port.opening.pop(self, None)
        self.phase = Phase.DONE
        transport = self.transport
        assert transport is not None
        transport.write(serialize(response))
        if self._unread:  # closing now could reset the connection and lose the answer:
            self._end(self._port.close_timeout_s)  # half-close, let the client close
        else:
            transport.close()  # the answer goes out, then the socket is closed

    def handshake(self, request: HttpRequest, subprotocol: str) -> bytes | Response:
        """The 101 response head for a valid WebSocket handshake, else websockets'
        answer to it (400 for a missing key, 426 without `Upgrade`, ...)."""
        head = websocket_accept(request, subprotocol)
        if head is not None:
            return head

        def select(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
            return Subprotocol(subprotocol) if subprotocol in offered else None

        judge = ServerProtocol(select_subprotocol=select, logger=ws_log)
        response = judge.accept(request.to_websockets())
        judge.parser.close()
        if response.status_code != 101:
            return response
        return response.serialize()

    def accept_websocket(
        self, head: bytes, owner: WebSocketOwner, *, first_text: bytes | None = None
    ) -> None:
        """Send the 101 (and `first_text`, in the same write); frames go to `owner`."""
        if not self._open(head, first_text):
            return
        self._owner = owner
        if self._early:
            early, self._early = self._early, b""
            self._websocket_data(early)

    def refuse_in_band(self, head: bytes, code: int, reason: str) -> None:
        """Send the 101 and at once a close frame: a refusal page JavaScript can read."""
        if self._open(head, None):
            self.close(code, reason)

    def _open(self, head: bytes, first_text: bytes | None) -> bool:
        if self.phase is not Phase.ANSWERING:
            return False  # lost (or timed out) while the handler decided
        self._port.opening.pop(self, None)
        self.phase = Phase.WEBSOCKET
        assert self.transport is not None
        self.transport.write(head if first_text is None else head + text_frame(first_text))
        return True

    def stream(self, head: bytes, owner: StreamOwner) -> None:
        """Start a long-lived response with `head` (status line and headers); its body
        follows by `write` until `finish`."""
        if self.phase is not Phase.ANSWERING:
            return
        self._port.opening.pop(self, None)
        self.phase = Phase.STREAM
        self._owner = owner
        assert self.transport is not None
        self.transport.write(head)

    def write(self, data: bytes) -> None:
        """More of a streamed response (ignored once the connection is gone)."""
        if self.phase is Phase.STREAM and self.transport is not None:
            self.transport.write(data)

    def finish(self, timeout_s: float | None = None) -> None:
        """End a streamed response: what is buffered goes out, then the connection ends
        (aborted if the peer has not closed within `timeout_s`, by default the port's
        close timeout)."""
        if self.phase is Phase.STREAM:
            self.phase = Phase.DONE
            self._end(self._port.close_timeout_s if timeout_s is None else timeout_s)

    def _end(self, timeout_s: float) -> None:
        """Half-close now (buffered data still goes out); abort if the peer has not
        closed its side within `timeout_s`."""
        transport = self.transport
        assert transport is not None
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
        self._abort_after(timeout_s)

    # -- WebSocket ----------------------------------------------------------------

    def _protocol(self) -> ServerProtocol:
        """websockets' protocol for this WebSocket, made now if it was not needed yet."""
        protocol = self.protocol
        if protocol is None:
            protocol = OpenServerProtocol(
                state=OPEN, max_size=self._port.max_message_bytes, logger=ws_log
            )
            self.protocol = protocol
        return protocol

    def _websocket_data(self, data: bytes) -> None:
        if self.protocol is None and self._fast_frame(data):
            return
        protocol = self._protocol()
        protocol.receive_data(data)
        events = protocol.events_received()
        self._write_pending()
        owner = self._owner
        if owner is not None:
            for frame in events:
                self._dispatch(frame, owner)  # type: ignore[arg-type]

    def _fast_frame(self, data: bytes) -> bool:
        """Handle `data` here if it is exactly one small frame of the kinds most
        connections ever send (text, close, ping, pong: final, masked, at most 125
        bytes), doing what websockets' protocol does with it; False: let websockets
        parse it (and everything after it). Most connections (a reconnect storm's)
        then never make a protocol object: its set-up and its parser were a fifth of
        a handshake's CPU. tests/edge/test_fast_frames.py holds this to websockets'
        own answers, byte for byte."""
        if self._closed_by_peer is not None:
            return True  # after a close, further data is discarded (RFC 6455 §1.4)
        size = len(data) - 6
        if not 0 <= size <= 125 or data[1] != 0x80 | size:  # masked, this length, no more
            return False
        if size > self._port.max_message_bytes:  # (websockets applies it to every frame)
            return False
        payload = apply_mask(data[6:], data[2:6]) if size else b""
        first = data[0]
        owner = self._owner
        transport = self.transport
        assert transport is not None
        if first == 0x81:  # FIN, text
            if owner is not None:
                self._message(payload, False, owner)  # type: ignore[arg-type]
            return True
        if first == 0x88:  # FIN, close: echo it, then end our side of TCP (a server's)
            try:
                close = Close.parse(payload)
            except (WebSocketProtocolError, UnicodeDecodeError):
                return False  # websockets fails the connection (1002, 1007)
            self._closed_by_peer = close
            transport.write(b"\x88" + bytes((size,)) + payload)
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
            self._abort_after(self._port.close_timeout_s)
            return True
        if first == 0x89:  # FIN, ping: the pong
            transport.write(b"\x8a" + bytes((size,)) + payload)
            return True
        if first == 0x8A:  # FIN, pong
            if owner is not None:
                owner.on_pong(payload)  # type: ignore[attr-defined]
            return True
        return False

    @property
    def close_codes(self) -> tuple[int | None, int | None]:
        """The close codes sent and received so far (None: none)."""
        protocol = self.protocol
        if protocol is not None:
            sent, received = protocol.close_sent, protocol.close_rcvd
            return (
                None if sent is None else sent.code,
                None if received is None else received.code,
            )
        closed = self._closed_by_peer
        return (None, None) if closed is None else (closed.code, closed.code)

    def _websocket_open(self) -> bool:
        if self.phase is not Phase.WEBSOCKET:
            return False
        protocol = self.protocol
        if protocol is None:
            return self._closed_by_peer is None
        return protocol.state is OPEN

    def _dispatch(self, frame: Frame, owner: WebSocketOwner) -> None:
        opcode = frame.opcode
        data = frame.data if isinstance(frame.data, bytes) else bytes(frame.data)
        if opcode is TEXT or opcode is BINARY:
            if frame.fin:
                self._message(data, opcode is BINARY, owner)
            else:
                self._fragments, self._binary = [data], opcode is BINARY
        elif opcode is CONT:
            fragments = self._fragments
            assert fragments is not None  # the protocol checks continuation order
            fragments.append(data)
            if frame.fin:
                self._fragments = None
                self._message(b"".join(fragments), self._binary, owner)
        elif opcode is PONG:
            owner.on_pong(data)
        # PING is answered and CLOSE echoed by the protocol itself

    def _message(self, data: bytes, binary: bool, owner: WebSocketOwner) -> None:
        if binary:
            owner.on_binary(data)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:  # as websockets' own assembler answers it
            self.fail(CloseCode.INVALID_PAYLOAD, f"{exc.reason} at position {exc.start}")
            return
        owner.on_text(text)

    def send_text(self, data: bytes) -> bool:
        """Write one text frame (UTF-8 bytes); False once the WebSocket is closing.

        The frame is made here, not by `protocol.send_text`: on the delivery path
        websockets' frame object, its checks and serialization were a tenth of the
        edge's CPU. The bytes are the same (a server's frames are not masked, no
        extension is negotiated, messages are never fragmented), and the protocol
        has nothing of its own waiting to be written (`_write_pending` runs after
        everything that makes it write)."""
        if not self._websocket_open():
            return False
        assert self.transport is not None
        self.transport.write(text_frame(data))
        return True

    def send_ping(self, data: bytes) -> bool:
        if not self._websocket_open():
            return False
        if self.protocol is None and len(data) < 126:  # (its pong comes to `_fast_frame`)
            assert self.transport is not None
            self.transport.write(b"\x89" + bytes((len(data),)) + data)
            return True
        self._protocol().send_ping(data)
        self._write_pending()
        return True

    def close(self, code: int, reason: str, timeout_s: float | None = None) -> None:
        """Start the closing handshake; abort if it has not ended within `timeout_s`
        (the port's close timeout by default). Nothing if already closing."""
        if not self._websocket_open():
            return
        protocol = self._protocol()
        protocol.send_close(code, reason)
        self._abort_after(self._port.close_timeout_s if timeout_s is None else timeout_s)
        self._write_pending()

    def fail(self, code: int, reason: str) -> None:
        """Close at once after a protocol error of the peer (no waiting for its close)."""
        if self.phase is not Phase.WEBSOCKET or self._closed_by_peer is not None:
            return
        protocol = self._protocol()
        protocol.fail(code, reason)
        self._write_pending()
        self._abort_after(self._port.close_timeout_s)

    def abort(self) -> None:
        if self.transport is not None:
            if self.phase is Phase.WEBSOCKET:
                self.phase = Phase.DONE  # nothing more is written; connection_lost follows
            self.transport.abort()

    def _write_pending(self) -> None:
        """What the protocol has to send; an empty chunk means half-close (server: the
        closing handshake is complete on our side)."""
        protocol = self.protocol
        assert protocol is not None
        transport = self.transport
        assert transport is not None
        for chunk in protocol.data_to_send():
            if transport.is_closing():
                return
            if chunk:
                try:
                    transport.write(chunk)
                except RuntimeError:  # after write_eof: the connection is ending anyway
                    return
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        if protocol.close_expected():
            self._abort_after(self._port.close_timeout_s)

    def _abort_after(self, timeout_s: float) -> None:
        """Abort unless the connection is gone within `timeout_s` (the first deadline set
        stands; the port checks it every 0.25 s)."""
        port = self._port
        if self.phase is not Phase.CLOSED and self not in port.closing:
            port.closing[self] = port.loop.time() + timeout_s


__all__ = [
    "ClientPort",
    "ClientSocket",
    "RequestHandler",
    "StreamOwner",
    "WebSocketOwner",
]
