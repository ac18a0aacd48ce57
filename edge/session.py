"""The sans-I/O connection session.

A Session is fed decoded text frames (and the time) and returns actions for
the adapter to carry out: frames to send, subscriptions to take, publishes,
RPCs, or a close. It never touches a socket or NATS, so every protocol rule
is tested without either (see tests/edge/test_session.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge import protocol
from edge.policy import PolicyLookup, publish_refusal, subscribe_refusal
from edge.protocol import ProtocolError, Request
from edge.ratelimit import ErrorWindow, TokenBucket
from switchboard.contract.channels import is_valid_channel, is_valid_method
from switchboard.contract.codes import ABUSIVE, CloseCode, ErrorCode
from switchboard.contract.tokens import Claims, TokenError


@dataclass(frozen=True, slots=True)
class Send:
    text: str


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    request_id: str | None
    channel: str
    since: Position | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client stands in a channel's history."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    request_id: str | None
    channel: str


@dataclass(frozen=True, slots=True)
class Publish:
    request_id: str | None
    channel: str
    body: bytes  # the encoded `data`, ready for NATS
    msg_id: str | None


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    request_id: str | None
    channel: str


@dataclass(frozen=True, slots=True)
class Rpc:
    request_id: str | None
    method: str
    body: bytes
    timeout_s: float


Action = Send | Close | Subscribe | Unsubscribe | Publish | Rpc | PresenceQuery


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 65536
    max_subscriptions: int = 256
    max_rpcs_in_flight: int = 16
    rate_per_s: float = 100.0
    rate_burst: int = 200
    abuse_errors: int = 10
    abuse_window_s: float = 10.0
    rpc_timeout_ms: int = 5000
    rpc_max_timeout_ms: int = 30000


class Session:
    """Protocol state of one client connection."""

    def __init__(
        self,
        claims: Claims,
        *,
        limits: Limits,
        policy_for: PolicyLookup,
        verify: Callable[[str], Claims],
        now: float,
        on_error: Callable[[str], None] = lambda code: None,
    ) -> None:
        self.claims = claims
        self.limits = limits
        self.subscriptions: set[str] = set()
        self.rpcs_in_flight = 0
        self.closed = False
        self._policy_for = policy_for
        self._verify = verify
        self._on_error = on_error
        self._bucket = TokenBucket(limits.rate_per_s, limits.rate_burst, now)
        self._errors = ErrorWindow(limits.abuse_errors, limits.abuse_window_s)

    @property
    def user(self) -> str:
        return self.claims.sub

    def welcome(self, session_id: str, node: str, ping_interval_s: float) -> Send:
        return Send(
            protocol.frame(
                "welcome",
                {
                    "session": session_id,
                    "node": node,
                    "user": self.claims.sub,
                    "ping_interval_s": ping_interval_s,
                    "expires_at": int(self.claims.exp),
                    "limits": {
                        "max_message_bytes": self.limits.max_message_bytes,
                        "rate_per_s": self.limits.rate_per_s,
                        "burst": self.limits.rate_burst,
                        "max_subscriptions": self.limits.max_subscriptions,
                    },
                },
            )
        )

    # -- input -------------------------------------------------------------

    def receive(self, text: str, now: float) -> list[Action]:
        """Handle one client text frame."""
        if self.closed:
            return []
        try:
            request = protocol.parse(text)
            if not self._bucket.take(now):
                return self.refuse(
                    request.id, ErrorCode.RATE_LIMITED, "over the message rate limit", now
                )
            return self._dispatch(request, now)
        except ProtocolError as exc:
            return self.refuse(exc.request_id, exc.code, exc.message, now)

    def receive_binary(self) -> list[Action]:
        return self._close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")

    def check_expiry(self, now: float) -> list[Action]:
        """Called when the token's `exp` passes without a refresh."""
        if not self.closed and now >= self.claims.exp:
            return self._close(CloseCode.TOKEN_EXPIRED, "token expired")
        return []

    def refuse(
        self, request_id: str | None, code: ErrorCode, message: str, now: float
    ) -> list[Action]:
        """An error frame; abusive ones count toward the 1008 threshold."""
        self._on_error(code.value)
        actions: list[Action] = [Send(protocol.error(request_id, code, message))]
        if code in ABUSIVE and self._errors.add(now):
            actions += self._close(CloseCode.POLICY_VIOLATION, "too many bad messages")
        return actions

    # -- completions reported by the adapter --------------------------------

    def subscribe_failed(self, channel: str) -> None:
        self.subscriptions.discard(channel)

    def rpc_finished(self) -> None:
        self.rpcs_in_flight -= 1

    # -- handlers ------------------------------------------------------------

    def _dispatch(self, request: Request, now: float) -> list[Action]:
        match request.type:
            case "subscribe":
                return self._subscribe(request, now)
            case "unsubscribe":
                channel = self._channel(request)
                self.subscriptions.discard(channel)
                return [Unsubscribe(request.id, channel)]
            case "publish":
                return self._publish(request, now)
            case "rpc":
                return self._rpc(request, now)
            case "refresh":
                return self._refresh(request, now)
            case "presence":
                return self._presence(request, now)
        raise AssertionError(request.type)  # parse() admits only CLIENT_TYPES

    def _channel(self, request: Request) -> str:
        channel: str = protocol.field(request, "channel", str)
        if not is_valid_channel(channel):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                "invalid channel name: use [A-Za-z0-9_-] segments joined by ':'",
                request.id,
            )
        return channel

    def _subscribe(self, request: Request, now: float) -> list[Action]:
        channel = self._channel(request)
        since = _position(request)
        refusal = subscribe_refusal(self.claims, channel, self._policy_for(channel))
        if refusal:
            return self.refuse(request.id, ErrorCode.FORBIDDEN, refusal, now)
        if channel not in self.subscriptions:
            if len(self.subscriptions) >= self.limits.max_subscriptions:
                return self.refuse(
                    request.id,
                    ErrorCode.LIMIT_EXCEEDED,
                    f"at most {self.limits.max_subscriptions} subscriptions",
                    now,
                )
            self.subscriptions.add(channel)
        return [Subscribe(request.id, channel, since)]

    def _presence(self, request: Request, now: float) -> list[Action]:
        channel = self._channel(request)
        policy = self._policy_for(channel)
        if not policy.presence:
            return self.refuse(
                request.id, ErrorCode.NOT_ENABLED, f"presence is off for '{channel}'", now
            )
        refusal = subscribe_refusal(self.claims, channel, policy)
        if refusal:  # who is in a channel is visible to those who may subscribe to it
            return self.refuse(request.id, ErrorCode.FORBIDDEN, refusal, now)
        return [PresenceQuery(request.id, channel)]

    def _publish(self, request: Request, now: float) -> list[Action]:
        channel = self._channel(request)
        if "data" not in request.payload:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field 'data'", request.id)
        msg_id = protocol.field(request, "msg_id", str, required=False)
        policy = self._policy_for(channel)
        refusal = publish_refusal(self.claims, channel, policy)
        if refusal:
            return self.refuse(request.id, ErrorCode.FORBIDDEN, refusal, now)
        body = _encode_data(request.payload["data"])
        if len(body) > policy.max_message_bytes:
            return self.refuse(
                request.id,
                ErrorCode.TOO_LARGE,
                f"data is {len(body)} bytes; '{channel}' allows {policy.max_message_bytes}",
                now,
            )
        return [Publish(request.id, channel, body, msg_id)]

    def _rpc(self, request: Request, now: float) -> list[Action]:
        method: str = protocol.field(request, "method", str)
        if not is_valid_method(method):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                "invalid method name: use [A-Za-z0-9_-] segments joined by '.'",
                request.id,
            )
        timeout_ms = protocol.field(request, "timeout_ms", int, required=False)
        if timeout_ms is None:
            timeout_ms = self.limits.rpc_timeout_ms
        if not 0 < timeout_ms <= self.limits.rpc_max_timeout_ms:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"'timeout_ms' must be 1..{self.limits.rpc_max_timeout_ms}",
                request.id,
            )
        if self.rpcs_in_flight >= self.limits.max_rpcs_in_flight:
            return self.refuse(
                request.id,
                ErrorCode.LIMIT_EXCEEDED,
                f"at most {self.limits.max_rpcs_in_flight} RPCs in flight",
                now,
            )
        self.rpcs_in_flight += 1
        body = _encode_data(request.payload.get("data"))
        return [Rpc(request.id, method, body, timeout_ms / 1000)]

    def _refresh(self, request: Request, now: float) -> list[Action]:
        token: str = protocol.field(request, "token", str)
        try:
            claims = self._verify(token)
        except TokenError as exc:
            return self.refuse(request.id, ErrorCode.UNAUTHORIZED, str(exc), now)
        if claims.sub != self.claims.sub:
            return self.refuse(
                request.id, ErrorCode.FORBIDDEN, "refresh token is for another user", now
            )
        self.claims = claims
        return [Send(protocol.ack(request.id, {"expires_at": int(claims.exp)}))]

    def _close(self, code: int, reason: str) -> list[Action]:
        self.closed = True
        return [Close(code, reason)]


def _position(request: Request) -> Position | None:
    since = protocol.field(request, "since", dict, required=False)
    if since is None:
        return None
    offset, epoch = since.get("offset"), since.get("epoch")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "'since.offset' must be an integer >= 0", request.id
        )
    if not isinstance(epoch, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'since.epoch' must be a string", request.id)
    return Position(offset, epoch)


def _encode_data(data: Any) -> bytes:
    """Compact JSON bytes of a client's `data` (it came from JSON, so it re-encodes)."""
    return protocol.encode(data).encode()
