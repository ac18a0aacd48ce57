"""The sans-I/O connection session.

A Session is fed decoded text frames (and the time) and returns actions for
the adapter to carry out: frames to send, subscriptions to take, publishes,
RPCs, or a close. It never touches a socket or NATS, so every protocol rule
is tested without either (see tests/edge/test_session.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge import protocol
from edge.policy import PolicyLookup, publish_refusal, subscribe_refusal
from edge.protocol import (
    ClientMessage,
    Position,
    PresenceMessage,
    ProtocolError,
    PublishMessage,
    RefreshMessage,
    Request,
    RpcMessage,
    SubscribeMessage,
    UnsubscribeMessage,
)
from edge.ratelimit import ErrorWindow, TokenBucket
from switchboard.contract.codes import ABUSIVE, CloseCode, ErrorCode
from switchboard.contract.errors import TokenRevoked
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


def welcome_frame(
    session_id: str, node: str, user: str, ping_interval_s: float, expires_at: int, limits: Limits
) -> str:
    """The `welcome` frame (docs/protocol.md): its definition, which `Session.welcome`
    reproduces byte for byte."""
    return protocol.frame(
        "welcome",
        {
            "session": session_id,
            "node": node,
            "user": user,
            "ping_interval_s": ping_interval_s,
            "expires_at": expires_at,
            "limits": {
                "max_message_bytes": limits.max_message_bytes,
                "rate_per_s": limits.rate_per_s,
                "burst": limits.rate_burst,
                "max_subscriptions": limits.max_subscriptions,
            },
        },
    )


@functools.lru_cache(maxsize=16)
def _welcome_parts(node: str, ping_interval_s: float, limits: Limits) -> tuple[str, str, str]:
    """The parts of `welcome_frame` all connections of an edge share, encoded once:
    what goes between session and user, the ping interval, and what follows the
    expiry (tests/edge/test_session.py holds the assembly to `welcome_frame`)."""
    limits_json = protocol.encode(
        {
            "max_message_bytes": limits.max_message_bytes,
            "rate_per_s": limits.rate_per_s,
            "burst": limits.rate_burst,
            "max_subscriptions": limits.max_subscriptions,
        }
    )
    node_part = ',"node":' + protocol.encode_string(node) + ',"user":'
    return node_part, protocol.encode(ping_interval_s), ',"limits":' + limits_json + "}}"


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
        """The first frame of every connection: what `welcome_frame` makes, assembled
        around the parts every connection of this edge shares (encoded once)."""
        node_part, ping, tail = _welcome_parts(node, ping_interval_s, self.limits)
        claims = self.claims
        return Send(
            "".join(
                (
                    '{"type":"welcome","payload":{"session":',
                    protocol.encode_string(session_id),
                    node_part,
                    protocol.encode_string(claims.sub),
                    ',"ping_interval_s":',
                    ping,
                    ',"expires_at":',
                    str(int(claims.exp)),
                    tail,
                )
            )
        )

    # -- input -------------------------------------------------------------

    def receive(self, text: str, now: float) -> list[Action]:
        """Handle one client text frame."""
        if self.closed:
            return []
        try:
            request = protocol.parse(text)
        except ProtocolError as exc:
            return self.refuse(exc.request_id, exc.code, exc.message, now)
        return self.handle(request, now)

    def handle(self, request: Request, now: float) -> list[Action]:
        """A decoded frame: from the socket, or made on the client's behalf (a resume
        token's subscriptions) under the same rate limit and checks."""
        if self.closed:
            return []
        if not self._bucket.take(now):
            return self.refuse(
                request.id, ErrorCode.RATE_LIMITED, "over the message rate limit", now
            )
        try:
            return self._dispatch(protocol.typed(request), now)
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

    def _dispatch(self, message: ClientMessage, now: float) -> list[Action]:
        match message:
            case SubscribeMessage():
                return self._subscribe(message, now)
            case UnsubscribeMessage(request_id, channel):
                self.subscriptions.discard(channel)
                return [Unsubscribe(request_id, channel)]
            case PublishMessage():
                return self._publish(message, now)
            case RpcMessage():
                return self._rpc(message, now)
            case RefreshMessage():
                return self._refresh(message, now)
            case PresenceMessage(request_id, channel):
                return self._presence(request_id, channel, now)

    def _subscribe(self, message: SubscribeMessage, now: float) -> list[Action]:
        channel = message.channel
        refusal = subscribe_refusal(self.claims, channel, self._policy_for(channel))
        if refusal:
            return self.refuse(message.id, ErrorCode.FORBIDDEN, refusal, now)
        if channel not in self.subscriptions:
            if len(self.subscriptions) >= self.limits.max_subscriptions:
                return self.refuse(
                    message.id,
                    ErrorCode.LIMIT_EXCEEDED,
                    f"at most {self.limits.max_subscriptions} subscriptions",
                    now,
                )
            self.subscriptions.add(channel)
        return [Subscribe(message.id, channel, message.since)]

    def _presence(self, request_id: str | None, channel: str, now: float) -> list[Action]:
        policy = self._policy_for(channel)
        if not policy.presence:
            return self.refuse(
                request_id, ErrorCode.NOT_ENABLED, f"presence is off for '{channel}'", now
            )
        refusal = subscribe_refusal(self.claims, channel, policy)
        if refusal:  # who is in a channel is visible to those who may subscribe to it
            return self.refuse(request_id, ErrorCode.FORBIDDEN, refusal, now)
        return [PresenceQuery(request_id, channel)]

    def _publish(self, message: PublishMessage, now: float) -> list[Action]:
        channel = message.channel
        policy = self._policy_for(channel)
        refusal = publish_refusal(self.claims, channel, policy)
        if refusal:
            return self.refuse(message.id, ErrorCode.FORBIDDEN, refusal, now)
        body = _encode_data(message.data)
        if len(body) > policy.max_message_bytes:
            return self.refuse(
                message.id,
                ErrorCode.TOO_LARGE,
                f"data is {len(body)} bytes; '{channel}' allows {policy.max_message_bytes}",
                now,
            )
        return [Publish(message.id, channel, body, message.msg_id)]

    def _rpc(self, message: RpcMessage, now: float) -> list[Action]:
        timeout_ms = message.timeout_ms
        if timeout_ms is None:
            timeout_ms = self.limits.rpc_timeout_ms
        if not 0 < timeout_ms <= self.limits.rpc_max_timeout_ms:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"'timeout_ms' must be 1..{self.limits.rpc_max_timeout_ms}",
                message.id,
            )
        if self.rpcs_in_flight >= self.limits.max_rpcs_in_flight:
            return self.refuse(
                message.id,
                ErrorCode.LIMIT_EXCEEDED,
                f"at most {self.limits.max_rpcs_in_flight} RPCs in flight",
                now,
            )
        self.rpcs_in_flight += 1
        body = _encode_data(message.data)
        return [Rpc(message.id, message.method, body, timeout_ms / 1000)]

    def _refresh(self, message: RefreshMessage, now: float) -> list[Action]:
        try:
            claims = self._verify(message.token)
        except TokenRevoked as exc:
            return self.refuse(message.id, ErrorCode.FORBIDDEN, str(exc), now)
        except TokenError as exc:
            return self.refuse(message.id, ErrorCode.UNAUTHORIZED, str(exc), now)
        if claims.sub != self.claims.sub:
            return self.refuse(
                message.id, ErrorCode.FORBIDDEN, "refresh token is for another user", now
            )
        self.claims = claims
        return [Send(protocol.ack(message.id, {"expires_at": int(claims.exp)}))]

    def _close(self, code: int, reason: str) -> list[Action]:
        self.closed = True
        return [Close(code, reason)]


def _encode_data(data: Any) -> bytes:
    """Compact JSON bytes of a client's `data` (it came from JSON, so it re-encodes)."""
    return protocol.encode(data).encode()
