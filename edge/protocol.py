"""Wire format: parse client frames, encode server frames (DESIGN §3).

Pure functions, no I/O. Server frames are compact JSON with no raw newlines,
so several can share one WebSocket frame separated by `\n`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from switchboard.contract.channels import is_valid_channel, is_valid_method
from switchboard.contract.codes import RETRYABLE, ErrorCode
from switchboard.contract.errors import ProtocolError as ProtocolError

CLIENT_TYPES = frozenset({"subscribe", "unsubscribe", "publish", "rpc", "presence", "refresh"})
MAX_ID_LENGTH = 128
# Arrays and objects may nest this deep inside `data`. Far below the JSON
# encoder's recursion limit (~1000 levels, less the stack in use), so whatever is
# accepted can always be encoded again for delivery, and within what common
# client parsers take (serde_json stops at 128).
MAX_DEPTH = 64
FRAME_DEPTH = MAX_DEPTH + 2  # a client frame wraps `data` in the frame and its payload
TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels"

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(obj: Any) -> str:
    return _encoder.encode(obj)


def encode_string(text: str) -> str:
    """A JSON string exactly as `encode` writes one (only `"`, `\\` and control
    characters escaped: `ensure_ascii=False`)."""
    return encode_basestring(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def loads(text: str | bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no overflowing numbers, no lone surrogates.

    Whatever this returns re-encodes to valid UTF-8 JSON, so a value taken in
    can always be sent out again.
    """
    if isinstance(text, bytes):
        text = text.decode()  # strict UTF-8: never yields a surrogate
    elif not text.isascii():  # a str handed in directly may hold a lone surrogate
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError("lone surrogate") from None
    value = _decoder.decode(text)
    if "\\ud" in text.lower():  # only a \uXXXX escape can smuggle in a surrogate
        try:
            encode(value).encode()
        except UnicodeEncodeError:
            raise ValueError("lone surrogate") from None
    return value


def deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects in decoded JSON nest more than `limit` levels (scalar: 0).

    Recursion stops at `limit`, so it stays far from the recursion limit. About
    twice the cost of decoding in the worst case (64 KiB of `[]`), nothing otherwise.
    """
    kind = type(value)
    if kind is not dict and kind is not list:
        return False
    if limit == 0:
        return True
    for child in value.values() if kind is dict else value:
        kind = type(child)
        if (kind is dict or kind is list) and deeper_than(child, limit - 1):
            return True
    return False


def nesting_allowed(text: str | bytes, value: Any, limit: int) -> bool:
    """`value` (decoded from `text`) nests at most `limit` levels.

    A text with no more brackets than the limit cannot nest deeper, which spares
    the walk for almost every message.
    """
    if isinstance(text, bytes):
        opening = text.count(b"[") + text.count(b"{")
    else:
        opening = text.count("[") + text.count("{")
    return opening <= limit or not deeper_than(value, limit)


@dataclass(frozen=True, slots=True)
class Request:
    type: str
    id: str | None
    payload: dict[str, Any]


def parse(text: str) -> Request:
    """Decode one client frame into a Request, or raise ProtocolError."""
    try:
        obj = loads(text)
    except RecursionError:  # nested deeper than the decoder goes
        raise ProtocolError(ErrorCode.BAD_REQUEST, TOO_DEEP) from None
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "malformed JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a message must be a JSON object")
    request_id = obj.get("id")
    if request_id is not None and (
        not isinstance(request_id, str) or len(request_id) > MAX_ID_LENGTH
    ):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"'id' must be a string of at most {MAX_ID_LENGTH}"
        )
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field 'type'", request_id)
    if kind not in CLIENT_TYPES:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown type '{kind[:64]}'", request_id)
    if not nesting_allowed(text, obj, FRAME_DEPTH):  # refused before any ack (issue 18)
        raise ProtocolError(ErrorCode.BAD_REQUEST, TOO_DEEP, request_id)
    payload = obj.get("payload", {})
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'payload' must be an object", request_id)
    return Request(kind, request_id, payload)


JSON_TYPES: dict[type, str] = {str: "a string", int: "an integer", dict: "an object"}


# -- typed client messages ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client stands in a channel's history."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class SubscribeMessage:
    id: str | None
    channel: str
    since: Position | None = None


@dataclass(frozen=True, slots=True)
class UnsubscribeMessage:
    id: str | None
    channel: str


@dataclass(frozen=True, slots=True)
class PublishMessage:
    id: str | None
    channel: str
    data: Any
    msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class RpcMessage:
    id: str | None
    method: str
    data: Any
    timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class PresenceMessage:
    id: str | None
    channel: str


@dataclass(frozen=True, slots=True)
class RefreshMessage:
    id: str | None
    token: str


ClientMessage = (
    SubscribeMessage
    | UnsubscribeMessage
    | PublishMessage
    | RpcMessage
    | PresenceMessage
    | RefreshMessage
)


def parse_message(text: str) -> ClientMessage:
    """Decode one client frame into its typed message, or raise ProtocolError."""
    return typed(parse(text))


def typed(request: Request) -> ClientMessage:
    """The typed message of a decoded frame: every field's type and form checked."""
    match request.type:
        case "subscribe":
            return SubscribeMessage(request.id, _channel(request), _position(request))
        case "unsubscribe":
            return UnsubscribeMessage(request.id, _channel(request))
        case "publish":
            channel = _channel(request)
            if "data" not in request.payload:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field 'data'", request.id)
            data = request.payload["data"]
            return PublishMessage(request.id, channel, data, _msg_id(request))
        case "rpc":
            method: str = field(request, "method", str)
            if not is_valid_method(method):
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    "invalid method name: use [A-Za-z0-9_-] segments joined by '.'",
                    request.id,
                )
            timeout_ms = field(request, "timeout_ms", int, required=False)
            return RpcMessage(request.id, method, request.payload.get("data"), timeout_ms)
        case "presence":
            return PresenceMessage(request.id, _channel(request))
        case "refresh":
            return RefreshMessage(request.id, field(request, "token", str))
    raise AssertionError(request.type)  # parse() admits only CLIENT_TYPES


def _channel(request: Request) -> str:
    channel: str = field(request, "channel", str)
    if not is_valid_channel(channel):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            "invalid channel name: use [A-Za-z0-9_-] segments joined by ':'",
            request.id,
        )
    return channel


def _position(request: Request) -> Position | None:
    since = field(request, "since", dict, required=False)
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


def _msg_id(request: Request) -> str | None:
    """`msg_id` travels as the `Nats-Msg-Id` header: printable, bounded, one line."""
    msg_id: str | None = field(request, "msg_id", str, required=False)
    if msg_id is not None and not (
        0 < len(msg_id) <= MAX_ID_LENGTH and msg_id.isprintable() and msg_id.strip() == msg_id
    ):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"'msg_id' must be 1..{MAX_ID_LENGTH} printable characters, no surrounding spaces",
            request.id,
        )
    return msg_id


def field(request: Request, name: str, kind: type, *, required: bool = True) -> Any:
    """A payload field of the given JSON type, or ProtocolError naming it."""
    value = request.payload.get(name)
    if value is None:
        if required:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"missing field '{name}'", request.id)
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"field '{name}' must be {JSON_TYPES[kind]}", request.id
        )
    return value


def frame(kind: str, payload: dict[str, Any], request_id: str | None = None) -> str:
    obj: dict[str, Any] = {"type": kind}
    if request_id is not None:
        obj["id"] = request_id
    obj["payload"] = payload
    return encode(obj)


def ack(request_id: str | None, payload: dict[str, Any] | None = None) -> str:
    return frame("ack", payload or {}, request_id)


def error(request_id: str | None, code: ErrorCode, message: str) -> str:
    return frame(
        "error",
        {"code": code.value, "message": message, "retryable": code in RETRYABLE},
        request_id,
    )


def backend_error(request_id: str | None, code: str, message: str) -> str:
    """A backend's own error code for an RPC (its `Sb-Error` header), never retryable."""
    return frame("error", {"code": code, "message": message, "retryable": False}, request_id)


def reconnect(resume_token: str | None, after_ms: int, reason: str) -> str:
    """Sent before a 1001 close: where to come back from and when (DESIGN §5)."""
    payload = {"resume_token": resume_token, "after_ms": after_ms, "reason": reason}
    return frame("reconnect", payload)


def event_frame(
    channel: str, data: Any, *, ts: int, sender: str | None, extra: dict[str, Any] | None = None
) -> str:
    """One `event` frame, encoded once per edge and shared by all local subscribers."""
    payload: dict[str, Any] = {"channel": channel, "data": data, "ts": ts}
    if sender is not None:
        payload["from"] = sender
    if extra:
        payload.update(extra)
    return frame("event", payload)
