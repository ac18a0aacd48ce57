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
    """One request head: what routes and admission read (`method`, `path` with its
    query, `headers`)."""

    __slots__ = ("headers", "method", "path", "upgrade", "version")

    def __init__(
        self,
        method: str,
        path: str,
        headers: RequestHeaders,
        *,
        version: str = "1.1",
        upgrade: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.version = version
        self.upgrade = upgrade  # llhttp saw `Connection: upgrade` and `Upgrade`

    def to_websockets(self) -> Request:
        return Request(self.path, self.headers.to_websockets(), self.method, f"HTTP/{self.version}")


class HeadParser:
    """Collects one request head from the bytes of a connection (httptools callbacks).

    `feed` returns the request once its head is complete, with the bytes that
    followed an upgrade request (a client may send its first frames at once);
    None while more is needed; raises HttpError for what cannot be served.
    """

    __slots__ = ("_count", "_done", "_headers", "_parser", "_size", "_url", "more")

    def __init__(self) -> None:
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers = RequestHeaders()
        self._count = 0  # header lines
        self._size = 0
        self._done = False
        self.more = False  # the client sent something after the head (a body, a request)

    # -- httptools callbacks ---------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if not self._done:
            self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._done:
            return
        self._count += 1
        if self._count <= MAX_HEADERS:
            self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._done = True

    def on_message_begin(self) -> None:
        if self._done:
            self.more = True

    def on_body(self, body: bytes) -> None:
        self.more = True

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
        if self._count > MAX_HEADERS:
            raise HttpError(431, "too many headers")
        # (a head that came whole in one read is measured with what followed it, unless
        # that followed an upgrade: pipelined requests and bodies are never read anyway)
        if self._size - len(rest) > MAX_HEAD_BYTES:
            raise HttpError(431, "request head too large")
        if not self._done:
            return None
        parser = self._parser
        assert parser is not None
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HttpError(400, f"unsupported HTTP version {version}")
        headers = self._headers
        if "transfer-encoding" in headers or any(
            value != "0" for value in headers.get_all("content-length")
        ):
            raise HttpError(400, "request bodies are not accepted")
        try:
            path = self._url.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "the request target must be ASCII") from None
        method = parser.get_method().decode("ascii")
        upgrade = upgrade or parser.should_upgrade()
        request = HttpRequest(method, path, headers, version=version, upgrade=upgrade)
        return request, rest


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
