"""HTTP/1.1 on the client port, without I/O: the request head (parsed by httptools,
llhttp's C parser), the WebSocket handshake's checks, and responses as bytes.

`edge.transport` feeds the bytes of a connection in and writes what comes out.
Parsing the upgrade with websockets' pure-Python parser cost ~100 µs per
browser handshake; llhttp does it in ~10 µs. A handshake that passes the strict
checks here is answered with a ready-made 101; anything else goes to websockets'
own `ServerProtocol.accept`, so its refusals (400, 426, 505, ...) are exactly
websockets'.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from typing import overload

import httptools
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together; over it: 431
MAX_HEADERS = 128
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

REASONS = {
    101: "Switching Protocols",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

_TOKEN = r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_TOKEN_LIST = re.compile(rf"{_TOKEN}(?:[ \t]*,[ \t]*{_TOKEN})*")
_CONNECTION_UPGRADE = re.compile(
    rf"(?:{_TOKEN}[ \t]*,[ \t]*)*upgrade(?:[ \t]*,[ \t]*{_TOKEN})*", re.IGNORECASE
)
_WS_KEY = re.compile(r"[A-Za-z0-9+/]{21}[AQgw]==")  # 16 bytes, canonical base64


class HttpError(Exception):
    """A request the edge answers with `status` and `reason` (the body), then closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestHeaders:
    """Request headers by lower-cased name; several values of a name are kept in order."""

    __slots__ = ("_map",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._map: dict[str, list[str]] = {}
        for name, value in pairs:
            self.add(name, value)

    @classmethod
    def from_raw(cls, raw: list[tuple[bytes, bytes]]) -> RequestHeaders:
        """Headers as httptools hands them over (bytes, latin-1)."""
        headers = cls()
        by_name = headers._map
        for name, value in raw:
            key = name.decode("latin-1").lower()
            values = by_name.get(key)
            if values is None:
                by_name[key] = [value.decode("latin-1")]
            else:
                values.append(value.decode("latin-1"))
        return headers

    def add(self, name: str, value: str) -> None:
        values = self._map.get(name.lower())
        if values is None:
            self._map[name.lower()] = [value]
        else:
            values.append(value)

    @overload
    def get(self, name: str) -> str | None: ...

    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        """The header's value; a header that must be single but came twice is a 400."""
        values = self._map.get(name.lower())
        if values is None:
            return default
        if len(values) > 1:
            raise HttpError(400, f"more than one {name} header")
        return values[0]

    def get_all(self, name: str) -> list[str]:
        return self._map.get(name.lower(), [])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def to_websockets(self) -> Headers:
        return Headers([(name, value) for name, values in self._map.items() for value in values])


class HttpRequest:
    """One request: what routes and admission read (`method`, `path` with its query,
    `headers`, and the `body` of a POST, bounded by the port)."""

    __slots__ = ("body", "headers", "method", "path", "upgrade", "version")

    def __init__(
        self,
        method: str,
        path: str,
        headers: RequestHeaders,
        *,
        version: str = "1.1",
        upgrade: bool = False,
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.body = body
        self.path = path
        self.headers = headers
        self.version = version
        self.upgrade = upgrade  # llhttp saw `Connection: upgrade` and `Upgrade`

    def to_websockets(self) -> Request:
        return Request(self.path, self.headers.to_websockets(), self.method, f"HTTP/{self.version}")


class HeadParser:
    """Collects one request head, and the body of a POST, from the bytes of a
    connection (httptools callbacks).

    `feed` returns the request once its head (and body) is complete, with the
    bytes that followed an upgrade request (a client may send its first frames at
    once); None while more is needed; raises HttpError for what cannot be served.

    A body is read only for POST, only with a `Content-Length` of at most
    `max_body_bytes` (else 413, before any of it is kept); a chunked body is refused
    (411): a bounded message needs no streaming upload, and a length known up front
    lets the edge refuse it without reading it. Other methods take no body (400).
    """

    __slots__ = (
        "_body",
        "_body_seen",
        "_complete",
        "_done",
        "_error",
        "_headers",
        "_max_body",
        "_parser",
        "_raw",
        "_size",
        "_url",
        "expects_continue",
        "more",
    )

    def __init__(self, max_body_bytes: int = 0) -> None:
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []  # header lines as they came
        self._headers = RequestHeaders()  # made from them once the head is complete
        self._size = 0
        self._done = False  # the head is complete
        self._complete = False  # the whole message (head and body) is complete
        self._max_body = max_body_bytes
        self._body: list[bytes] | None = None  # set once a body is accepted
        self._body_seen = 0
        self._error: HttpError | None = None  # a head whose body is refused
        self.more = False  # the client sent something after the request (a body, a request)
        self.expects_continue = False  # a body is read, and the client waits for `100 Continue`

    # -- httptools callbacks ---------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if not self._done:
            self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._done:
            self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        self._done = True
        self._headers = RequestHeaders.from_raw(self._raw[:MAX_HEADERS])
        parser = self._parser
        assert parser is not None
        try:  # decided here: the body may follow in the same chunk of bytes
            if self._body_length(parser.get_method().decode("ascii")):
                self._body = []
                expect = self._headers.get("expect")
                self.expects_continue = expect is not None and expect.lower() == "100-continue"
        except HttpError as exc:
            self._error = exc

    def on_message_begin(self) -> None:
        if self._done:
            self.more = True

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        if self._body is None or self._complete:
            self.more = True  # a body that is not read
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # -- feeding -----------------------------------------------------------------

    def close(self) -> None:
        """Done with this head: the C parser holds this object's callbacks, and without
        this that cycle would wait for the garbage collector."""
        self._parser = None

    def feed(self, data: bytes) -> tuple[HttpRequest, bytes] | None:
        assert self._parser is not None
        self._size += len(data)
        upgrade = False
        rest = b""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            upgrade = True
            rest = data[exc.args[0] :] if exc.args else b""
        except httptools.HttpParserError as exc:
            if not self._done:  # what follows a complete head is never read
                raise HttpError(400, f"malformed request: {exc}") from None
        if len(self._raw) > MAX_HEADERS:
            raise HttpError(431, "too many headers")
        # (a head that came whole in one read is measured with what followed it, unless
        # that followed an upgrade or was a body: pipelined requests are never read anyway)
        if self._size - len(rest) - self._body_seen > MAX_HEAD_BYTES:
            raise HttpError(431, "request head too large")
        if not self._done:
            return None
        parser = self._parser
        assert parser is not None
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HttpError(400, f"unsupported HTTP version {version}")
        method = parser.get_method().decode("ascii")
        if self._error is not None:
            raise self._error
        if self._body is not None and not self._complete:
            return None  # the body is still coming
        try:
            path = self._url.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "the request target must be ASCII") from None
        upgrade = upgrade or parser.should_upgrade()
        body = b"".join(self._body) if self._body else b""
        request = HttpRequest(
            method, path, self._headers, version=version, upgrade=upgrade, body=body
        )
        return request, rest

    def _body_length(self, method: str) -> int:
        """The body's length the request declares, if this edge reads it; HttpError if not."""
        headers = self._headers
        if "transfer-encoding" in headers:
            if method == "POST" and self._max_body:
                raise HttpError(411, "send the body with a Content-Length (not chunked)")
            raise HttpError(400, "request bodies are not accepted")
        lengths = headers.get_all("content-length")
        if not lengths or lengths == ["0"]:
            return 0
        if method != "POST" or not self._max_body:
            raise HttpError(400, "request bodies are not accepted")
        if len(set(lengths)) > 1 or not lengths[0].isdigit():
            raise HttpError(400, "one Content-Length, a number")
        length = int(lengths[0])
        if length > self._max_body:
            raise HttpError(413, f"the body is {length} bytes; at most {self._max_body}")
        return length


def websocket_accept(request: HttpRequest, subprotocol: str) -> bytes | None:
    """The 101 response for a well-formed WebSocket handshake, else None.

    Checks are stricter than websockets' (one value per header, canonical key):
    whatever fails them is decided by websockets itself (`ServerProtocol.accept`).
    `subprotocol` is selected when the client offers it.
    """
    if request.method != "GET" or request.version != "1.1" or not request.upgrade:
        return None
    headers = request.headers._map
    connection = headers.get("connection")
    upgrade = headers.get("upgrade")
    key = headers.get("sec-websocket-key")
    version = headers.get("sec-websocket-version")
    if (
        connection is None
        or len(connection) != 1
        or _CONNECTION_UPGRADE.fullmatch(connection[0]) is None
        or upgrade is None
        or len(upgrade) != 1
        or upgrade[0].lower() != "websocket"
        or key is None
        or len(key) != 1
        or _WS_KEY.fullmatch(key[0]) is None
        or version != ["13"]
        or len(headers.get("origin", ())) > 1
    ):
        return None
    selected = False
    for offer in headers.get("sec-websocket-protocol", ()):
        if _TOKEN_LIST.fullmatch(offer) is None:
            return None
        if not selected and subprotocol in (p.strip() for p in offer.split(",")):
            selected = True
    accept = base64.b64encode(hashlib.sha1(key[0].encode() + WS_GUID).digest())
    return b"".join(
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: ",
            accept,
            b"\r\nSec-WebSocket-Protocol: " + subprotocol.encode() if selected else b"",
            b"\r\n\r\n",
        )
    )


def plain_response(status: int, body: str, headers: dict[str, str] | None = None) -> Response:
    """A short text answer (errors of the transport itself)."""
    raw = body.encode()
    return Response(
        status,
        REASONS.get(status, ""),
        Headers(
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(raw))),
                *(headers or {}).items(),
            ]
        ),
        raw,
    )


def serialize(response: Response, *, close: bool = True) -> bytes:
    """The response's bytes; with `close`, it says the connection ends after it."""
    if close and "Connection" not in response.headers:
        response.headers["Connection"] = "close"
    return response.serialize()
