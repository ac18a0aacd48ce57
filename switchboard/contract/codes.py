"""The one table of close codes and error codes (DESIGN §3-4).

Clients, the edge and the docs all read from here so that a code means the
same thing everywhere. docs/protocol.md reproduces these tables.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """WebSocket close codes and what a client should do on each."""

    NORMAL = 1000  # normal close: do not reconnect
    GOING_AWAY = 1001  # drain (rollout, scale-down, shutdown): reconnect after `after_ms`
    UNSUPPORTED_DATA = 1003  # binary frame on a text protocol: fix the client
    INVALID_PAYLOAD = 1007  # invalid UTF-8: fix the client
    POLICY_VIOLATION = 1008  # repeated bad frames, rate-limit abuse: reconnect with backoff
    MESSAGE_TOO_BIG = 1009  # frame larger than the limit: fix the client
    INTERNAL_ERROR = 1011  # reconnect with backoff
    TRY_AGAIN_LATER = 1013  # overloaded, slow consumer evicted, backbone lost: backoff
    TOKEN_EXPIRED = 4001  # token expired and not refreshed: new token, then reconnect
    FORBIDDEN = 4003  # forbidden / revoked: do not reconnect


class ReconnectAdvice(StrEnum):
    NEVER = "never"
    AFTER_MS = "after_ms"
    BACKOFF = "backoff"
    NEW_TOKEN = "new_token"


CLOSE_ADVICE: dict[int, ReconnectAdvice] = {
    CloseCode.NORMAL: ReconnectAdvice.NEVER,
    CloseCode.GOING_AWAY: ReconnectAdvice.AFTER_MS,
    CloseCode.UNSUPPORTED_DATA: ReconnectAdvice.NEVER,
    CloseCode.INVALID_PAYLOAD: ReconnectAdvice.NEVER,
    CloseCode.POLICY_VIOLATION: ReconnectAdvice.BACKOFF,
    CloseCode.MESSAGE_TOO_BIG: ReconnectAdvice.NEVER,
    CloseCode.INTERNAL_ERROR: ReconnectAdvice.BACKOFF,
    CloseCode.TRY_AGAIN_LATER: ReconnectAdvice.BACKOFF,
    CloseCode.TOKEN_EXPIRED: ReconnectAdvice.NEW_TOKEN,
    CloseCode.FORBIDDEN: ReconnectAdvice.NEVER,
}


def close_advice(code: int) -> ReconnectAdvice:
    """What a client should do after a close with `code` (unknown codes: back off)."""
    return CLOSE_ADVICE.get(code, ReconnectAdvice.BACKOFF)


class ErrorCode(StrEnum):
    """Stable `code` strings of `error` frames."""

    BAD_REQUEST = "bad_request"  # malformed JSON, non-object, missing or invalid field
    UNKNOWN_TYPE = "unknown_type"  # `type` is not a client message type
    FORBIDDEN = "forbidden"  # token or channel policy does not allow it
    UNAUTHORIZED = "unauthorized"  # `refresh` with an invalid token
    RATE_LIMITED = "rate_limited"  # over the per-connection message rate
    TOO_LARGE = "too_large"  # publish data larger than the channel allows
    LIMIT_EXCEEDED = "limit_exceeded"  # too many subscriptions / RPCs in flight
    NOT_FOUND = "not_found"  # no backend answers this RPC method
    NOT_ENABLED = "not_enabled"  # feature off for this channel (e.g. presence)
    TIMEOUT = "timeout"  # the RPC backend did not answer in time
    UNAVAILABLE = "unavailable"  # backbone (NATS) unreachable; nothing was accepted
    INTERNAL = "internal"  # unexpected server error


RETRYABLE: frozenset[ErrorCode] = frozenset(
    {ErrorCode.RATE_LIMITED, ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL}
)

# Errors that are the client's fault; enough of them in a window close with 1008.
ABUSIVE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.BAD_REQUEST,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.RATE_LIMITED,
        ErrorCode.TOO_LARGE,
        ErrorCode.FORBIDDEN,
        ErrorCode.UNAUTHORIZED,
    }
)


# Backends (NATS, or the server API's `disconnect`) close every connection of a user
# by publishing on the user's subject with this header; its value is the close code.
DISCONNECT_HEADER = "Sb-Disconnect"
# Close codes a backend may ask for: normal, policy, or an application code (4000-4999).
DISCONNECT_CODES: frozenset[int] = frozenset({1000, 1008, *range(4000, 5000)})
