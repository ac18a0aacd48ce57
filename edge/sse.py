"""The fallback transport for networks that block WebSockets (DESIGN §8):
`GET /v1/sse` (Server-Sent Events) and `POST /v1/messages`.

An SSE stream is a `Connection` (its outbox, slow-consumer eviction, expiry,
drain, the `Member` that subscribes and recovers) writing to another `Wire`:
`SseWire` turns each frame into an SSE event (`edge.eventstream`) instead of a
WebSocket frame, and ends the stream instead of a closing handshake. Nothing of
the WebSocket path is copied; only keepalive differs (a comment line, no ping).

`POST /v1/messages` runs one client message through the user's `Session` (one per
user on this edge: the same rate limit and abuse window for all their requests)
and a `Member` whose link is the HTTP answer.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Response

from edge import protocol
from edge.connection import ABNORMAL_CLOSURE, Connection
from edge.eventstream import KEEPALIVE, BadEventId, EventStream, decode_id
from edge.flusher import Flusher
from edge.http import REASONS, HttpRequest
from edge.node import Member, Node
from edge.policy import subscribe_refusal
from edge.protocol import Position, ProtocolError
from edge.session import Close, Send, Session
from edge.transport import ClientSocket
from edge.upgrade import Refusal, find_credential, token_refusal
from switchboard.contract.channels import is_valid_channel
from switchboard.contract.codes import ErrorCode
from switchboard.contract.tokens import Claims, TokenError

if TYPE_CHECKING:
    pass

SSE_PATH = "/v1/sse"
MESSAGES_PATH = "/v1/messages"
POST_TYPES = frozenset({"publish", "rpc", "presence", "refresh"})
USER_IDLE_S = 60.0  # a user's POST session is forgotten after this long unused

# The HTTP status of an `error` answer, by code (a backend's own code: 200, its
# answer is the body).
ERROR_STATUS: dict[str, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_ENABLED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.LIMIT_EXCEEDED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}
REFUSAL_CODE: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    405: ErrorCode.BAD_REQUEST,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}


def json_answer(status: int, body: str, headers: dict[str, str] | None = None) -> Response:
    raw = body.encode()
    all_headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(raw))),
        ("Cache-Control", "no-store"),
        *(headers or {}).items(),
    ]
    return Response(status, REASONS.get(status, ""), Headers(all_headers), raw)


def refusal_answer(refusal: Refusal, headers: dict[str, str] | None = None) -> Response:
    """An HTTP refusal with the `error` frame of the WebSocket protocol as its body."""
    code = REFUSAL_CODE.get(refusal.status, ErrorCode.BAD_REQUEST)
    body = protocol.error(None, code, refusal.reason)
    return json_answer(refusal.status, body, refusal.headers | (headers or {}))


def cors_headers(request: HttpRequest) -> dict[str, str]:
    """For an allowed `Origin` (checked before): the page may read the answer."""
    origin = request.headers.get("Origin")
    if origin is None:
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def preflight(request: HttpRequest, methods: str) -> Response:
    return json_answer(
        204,
        "",
        cors_headers(request)
        | {
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "Authorization, Content-Type, Last-Event-ID",
            "Access-Control-Max-Age": "600",
        },
    )


# -- GET /v1/sse ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What `GET /v1/sse` asks for: channels, and where the client stands in them."""

    channels: list[str]
    positions: dict[str, Position]


def read_stream_request(request: HttpRequest, max_channels: int) -> StreamRequest | Refusal:
    """The channels (`?channel=`, repeated) and `Last-Event-ID` (header, or the
    `?lastEventId=` a client without headers may use); a 400 names what is wrong."""
    query = parse_qs(urlsplit(request.path).query)
    channels = list(dict.fromkeys(query.get("channel", [])))
    for channel in channels:
        if not is_valid_channel(channel):
            return Refusal(
                400,
                f"invalid channel name '{channel[:64]}': use [A-Za-z0-9_-] segments joined by ':'",
            )
    if len(channels) > max_channels:
        return Refusal(400, f"at most {max_channels} channels per stream")
    last_id = request.headers.get("Last-Event-ID") or next(iter(query.get("lastEventId", [])), None)
    positions: dict[str, Position] = {}
    if last_id:
        try:
            positions = decode_id(last_id)
        except BadEventId as exc:
            return Refusal(400, str(exc))
    return StreamRequest(channels, positions)


def subscriptions_for(
    wanted: StreamRequest, resume: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The stream's subscriptions in the shape of a resume token's: the channels asked
    for and those of a resume token, each from `Last-Event-ID`'s position, else the
    token's."""
    from_token = {sub["channel"]: sub for sub in resume or () if isinstance(sub, dict)}
    subscriptions = []
    for channel in dict.fromkeys([*wanted.channels, *from_token]):
        position = wanted.positions.get(channel)
        if position is not None:
            subscriptions.append(
                {"channel": channel, "offset": position.offset, "epoch": position.epoch}
            )
        else:
            sub = from_token.get(channel, {})
            subscriptions.append(
                {"channel": channel, "offset": sub.get("offset"), "epoch": sub.get("epoch")}
            )
    return subscriptions


def channel_refusal(node: Node, claims: Claims, channels: list[str]) -> Refusal | None:
    """The same authorization as `subscribe`, before the stream starts (a 403 the client
    can read, rather than an `error` event it may never look at)."""
    for channel in channels:
        reason = subscribe_refusal(claims, channel, node.policy_for(channel))
        if reason:
            return Refusal(403, reason)
    return None


def stream_head(request: HttpRequest) -> bytes:
    """The response head of an event stream: not cached, not buffered by proxies that
    honour `X-Accel-Buffering`, and delimited by the end of the connection."""
    lines = [
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/event-stream; charset=utf-8",
        b"Cache-Control: no-store",
        b"X-Accel-Buffering: no",
        b"Connection: close",
    ]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in cors_headers(request).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class SseWire:
    """An SSE stream over a client socket, as a connection's `Wire`: frames become
    events, a close becomes a last `close` event and the end of the stream."""

    __slots__ = ("_loop", "events", "last_write", "sock")

    close_codes: tuple[int | None, int | None] = (None, None)  # no WebSocket underneath

    def __init__(self, sock: ClientSocket, events: EventStream, now: float) -> None:
        self.sock = sock
        self.events = events
        self.last_write = now
        self._loop = asyncio.get_running_loop()

    @property
    def paused(self) -> bool:
        return self.sock.paused

    def send_text(self, data: bytes) -> bool:
        if not self.sock.streaming:
            return False
        self.sock.write(self.events.encode(data))
        self.last_write = self._loop.time()
        return True

    def send_ping(self, data: bytes) -> bool:
        return False  # keepalive is `comment`

    def comment(self, now: float) -> None:
        """A comment line: keeps proxies that close idle responses from closing it."""
        if self.sock.streaming:
            self.sock.write(KEEPALIVE)
            self.last_write = now

    def close(self, code: int, reason: str, timeout_s: float | None = None) -> None:
        if self.sock.streaming:
            self.sock.write(EventStream.closing(code, reason))
            self.sock.finish(timeout_s)

    def abort(self) -> None:
        self.sock.abort()


class SseStream(Connection):
    """One client on an SSE stream: a `Connection` over an `SseWire`."""

    __slots__ = ("wire",)

    def __init__(
        self,
        node: Node,
        flusher: Flusher,
        sock: ClientSocket,
        session: Session,
        cid: str,
        *,
        subscriptions: list[dict[str, Any]],
        positions: dict[str, Position],
        on_done: Callable[[Connection], None] | None = None,
    ) -> None:
        self.wire = SseWire(sock, EventStream(positions), asyncio.get_running_loop().time())
        super().__init__(
            node, flusher, self.wire, session, cid, resume=subscriptions, on_done=on_done
        )

    def open(self, head: bytes) -> None:
        """The response head and the `welcome` event, then the subscriptions."""
        settings = self.node.settings
        welcome = self.session.welcome(self.id, settings.pod_name, settings.sse_keepalive_s)
        self.wire.sock.stream(head, self)
        self.wire.send_text(welcome.text.encode())
        self._kick()

    def keepalive(self, now: float, interval_s: float, timeout_s: float) -> None:
        """A comment when nothing was written for `sse_keepalive_s` (no ping: an SSE
        client cannot answer one; a dead peer shows as a stalled outbox)."""
        wire = self.wire
        quiet = now - wire.last_write >= self.node.settings.sse_keepalive_s
        if quiet and not self.closing and not wire.paused:
            wire.comment(now)

    @property
    def close_code(self) -> int:
        return ABNORMAL_CLOSURE if self.closed_with is None else self.closed_with


# -- POST /v1/messages ---------------------------------------------------------------


class _Answer:
    """A `Member`'s link for one POSTed message: its first frame is the answer."""

    closing = False

    def __init__(self, log: Any) -> None:
        self.log = log
        self.frame: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Task[None]] = set()

    def deliver(self, frame: bytes) -> None:
        if not self.frame.done():
            self.frame.set_result(frame.decode())

    async def room_for(self, size: int) -> None:
        pass

    def abandon(self, code: int, reason: str) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        pass  # the session closes itself (abuse): `Poster` sees `session.closed`

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class Poster:
    """Answers `POST /v1/messages`: one client message, the user's token, the same
    JSON and answers as on the WebSocket."""

    def __init__(
        self,
        node: Node,
        verify: Callable[[str], Awaitable[Claims]],
        new_session: Callable[[Claims], Session],
        log: Any,
    ) -> None:
        self.node = node
        self._verify = verify
        self._new_session = new_session
        self._log = log
        self._users: dict[str, tuple[Session, float]] = {}  # user -> session, last use
        self._blocked: dict[str, float] = {}  # user -> until (monotonic), after abuse
        self._pruned = time.monotonic()

    async def answer(self, request: HttpRequest) -> Response:
        cors = cors_headers(request)
        if request.method == "OPTIONS":
            return preflight(request, "POST")
        if request.method != "POST":
            return refusal_answer(Refusal(405, "use POST"), cors | {"Allow": "POST, OPTIONS"})
        credential = find_credential("", [], request.headers.get("Authorization"))
        if credential is None:
            return refusal_answer(Refusal(401, "missing Authorization: Bearer <JWT>"), cors)
        try:
            claims = await self._verify(credential.value)
        except TokenError as exc:
            return refusal_answer(token_refusal(exc), cors)
        now = time.monotonic()
        self._prune(now)
        until = self._blocked.get(claims.sub)
        if until is not None:
            if now < until:
                wait = max(1, int(until - now + 0.999))
                refusal = Refusal(429, "too many bad messages", retry_after_s=wait)
                return refusal_answer(refusal, cors)
            del self._blocked[claims.sub]
        session = self._session(claims, now)
        status, body = await self._run(session, request.body, now)
        if session.closed:  # repeated bad messages: as the WebSocket's 1008, for a while
            self._users.pop(claims.sub, None)
            self._blocked[claims.sub] = now + session.limits.abuse_window_s
        self.node.metrics.count_post(status)
        return json_answer(status, body, cors)

    def _session(self, claims: Claims, now: float) -> Session:
        entry = self._users.get(claims.sub)
        session = entry[0] if entry is not None else self._new_session(claims)
        session.claims = claims  # this request's token decides what it may do
        self._users[claims.sub] = (session, now)
        return session

    async def _run(self, session: Session, body: bytes, now: float) -> tuple[int, str]:
        loop_now = asyncio.get_running_loop().time()
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return self._refused(session, None, ErrorCode.BAD_REQUEST, "body is not UTF-8")
        try:
            request = protocol.parse(text)
        except ProtocolError as exc:
            return self._refused(session, exc.request_id, exc.code, exc.message)
        if request.type not in POST_TYPES:
            message = (
                f"'{request.type}' is not sent here: subscribe with GET {SSE_PATH}"
                if request.type in ("subscribe", "unsubscribe")
                else f"unknown type '{request.type}'"
            )
            return self._refused(session, request.id, ErrorCode.BAD_REQUEST, message)
        answer = _Answer(self._log)
        member = Member(self.node, answer, session, "post-" + secrets.token_hex(6))
        actions = session.handle(request, loop_now)
        await member.execute(
            [a for a in actions if not isinstance(a, Close)]  # no socket to close
        )
        limits = session.limits
        wait_s = limits.rpc_max_timeout_ms / 1000 + 5
        try:
            frame = await asyncio.wait_for(asyncio.shield(answer.frame), wait_s)
        except TimeoutError:
            return 504, protocol.error(request.id, ErrorCode.TIMEOUT, "no answer in time")
        return _status_of(frame), frame

    def _refused(
        self, session: Session, request_id: str | None, code: ErrorCode, message: str
    ) -> tuple[int, str]:
        now = asyncio.get_running_loop().time()
        for action in session.refuse(request_id, code, message, now):
            if isinstance(action, Send):
                return _status_of(action.text), action.text
        return ERROR_STATUS.get(code, 400), protocol.error(request_id, code, message)

    def _prune(self, now: float) -> None:
        if now - self._pruned < 10:
            return
        self._pruned = now
        idle = [
            u
            for u, (s, used) in self._users.items()
            if now - used > USER_IDLE_S and not s.rpcs_in_flight
        ]
        for user in idle:
            del self._users[user]
        for user in [u for u, until in self._blocked.items() if until <= now]:
            del self._blocked[user]


def _status_of(frame: str) -> int:
    """200 for an `ack` or `rpc_response`; an `error`'s status by its code."""
    if not frame.startswith('{"type":"error"'):
        return 200
    code = json.loads(frame)["payload"]["code"]
    return ERROR_STATUS.get(code, 200)


__all__ = [
    "MESSAGES_PATH",
    "SSE_PATH",
    "Poster",
    "SseStream",
    "SseWire",
    "StreamRequest",
    "channel_refusal",
    "read_stream_request",
    "refusal_answer",
    "stream_head",
    "subscriptions_for",
]
