"""The HTTP server API for backends (DESIGN §8): publish, broadcast, send to a
user, disconnect a user on every edge, revoke a user's tokens, presence and history.

Plain objects in, plain objects out: `edge.admin` moves the bytes. Every refusal
is an `ApiError` whose message names the field; nothing is half done without
saying so (a broadcast answers per channel).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from edge import protocol
from edge.hub import HEADER_TS, decode_data
from edge.node import Node
from edge.ports import Unavailable
from edge.revocation import entry_key, entry_value
from switchboard.contract.channels import (
    channel_subject,
    is_valid_channel,
    is_valid_user_id,
    user_subject,
)
from switchboard.contract.codes import DISCONNECT_CODES, DISCONNECT_HEADER, CloseCode, ErrorCode
from switchboard.contract.tokens import is_number

MAX_BROADCAST = 1000  # channels in one broadcast
HISTORY_LIMIT = 100  # events per history answer, unless asked for fewer or more
HISTORY_MAX = 1000
HISTORY_WAIT_S = 0.2  # for a batch the stream does not have (the end of the history)
MAX_REASON_BYTES = 123  # what a WebSocket close frame can carry
FUTURE_SLACK_S = 5.0  # a revocation's `before` may be this far ahead (clock skew)


@dataclass
class ApiError(Exception):
    """An answer other than success: HTTP status, stable code, a message naming the field."""

    status: int
    code: ErrorCode
    message: str

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code.value, "message": self.message}}


def bad_request(message: str) -> ApiError:
    return ApiError(400, ErrorCode.BAD_REQUEST, message)


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body: a JSON object, nested no deeper than clients may send."""
    try:
        text = raw.decode()
        body = protocol.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad_request("the body must be a JSON object (UTF-8)") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    if not protocol.nesting_allowed(text, body, protocol.MAX_DEPTH + 1):
        raise bad_request(protocol.TOO_DEEP)
    return body


def _channel(value: object, field: str = "channel") -> str:
    if not isinstance(value, str) or not is_valid_channel(value):
        raise bad_request(f"'{field}' must be a channel name: [A-Za-z0-9_-] segments joined by ':'")
    return value


def _user(value: str) -> str:
    if not is_valid_user_id(value):
        raise bad_request("the user id in the path must match [A-Za-z0-9_@=+-]{1,128}")
    return value


def _data(body: Mapping[str, Any]) -> bytes:
    if "data" not in body:
        raise bad_request("missing field 'data'")
    return protocol.encode(body["data"]).encode()


def _msg_id(body: Mapping[str, Any]) -> str | None:
    value = body.get("msg_id")
    if value is None:
        return None
    if not isinstance(value, str) or not (
        0 < len(value) <= protocol.MAX_ID_LENGTH and value.isprintable() and value.strip() == value
    ):
        raise bad_request(f"'msg_id' must be 1..{protocol.MAX_ID_LENGTH} printable characters")
    return value


def _count(raw: str | None, field: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise bad_request(f"'{field}' must be an integer from {low} to {high}")
    return int(raw)


class ServerApi:
    """The calls of DESIGN §8, answered from this edge with the node's backbone."""

    def __init__(self, node: Node, keys: Collection[str]) -> None:
        self.node = node
        self._keys = tuple(key.encode() for key in keys)

    def authorize(self, header: str | None) -> None:
        """`Authorization: apikey <key>`, compared in constant time with every key."""
        if not self._keys:
            raise ApiError(
                503, ErrorCode.NOT_ENABLED, "no API keys configured (SB_EDGE_API_KEYS_FILE)"
            )
        scheme, _, key = (header or "").partition(" ")
        given = key.strip().encode()
        if scheme.lower() != "apikey" or not any(hmac.compare_digest(given, k) for k in self._keys):
            raise ApiError(
                401, ErrorCode.UNAUTHORIZED, "missing or unknown 'Authorization: apikey'"
            )

    def _headers(self, msg_id: str | None = None) -> dict[str, str]:
        headers = {HEADER_TS: str(int(time.time() * 1000))}
        if msg_id is not None:
            headers["Nats-Msg-Id"] = msg_id
        return headers

    async def _publish(self, channel: str, data: bytes, msg_id: str | None) -> dict[str, Any]:
        node = self.node
        limit = node.policy_for(channel).max_message_bytes
        if len(data) > limit:
            raise ApiError(
                413, ErrorCode.TOO_LARGE, f"data is {len(data)} bytes; '{channel}' allows {limit}"
            )
        subject = channel_subject(node.settings.subject_prefix, channel)
        stream = node.directory.stream_for(channel)
        answer: dict[str, Any] = {"channel": channel}
        try:
            if stream is None:
                await node.backbone.publish(subject, data, self._headers(msg_id))
            else:
                headers = self._headers(msg_id)
                answer["offset"] = await node.backbone.stream_publish(
                    subject, data, headers, stream
                )
                answer["epoch"] = await node.hub.epoch(stream)
        except Unavailable as exc:
            raise ApiError(503, ErrorCode.UNAVAILABLE, f"not accepted: {exc}") from None
        return answer

    async def publish(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._publish(_channel(body.get("channel")), _data(body), _msg_id(body))

    async def broadcast(self, body: Mapping[str, Any]) -> dict[str, Any]:
        channels = body.get("channels")
        if not isinstance(channels, list) or not 0 < len(channels) <= MAX_BROADCAST:
            raise bad_request(f"'channels' must be a list of 1 to {MAX_BROADCAST} channel names")
        names = [_channel(c, f"channels[{i}]") for i, c in enumerate(channels)]
        data = _data(body)
        results: list[dict[str, Any]] = []
        for channel in dict.fromkeys(names):  # each once, in the order given
            try:
                results.append(await self._publish(channel, data, None))
            except ApiError as exc:
                results.append({"channel": channel} | exc.body())
        if all("error" in r for r in results):
            first = results[0]["error"]
            raise ApiError(
                503 if first["code"] == "unavailable" else 400,
                ErrorCode(first["code"]),
                f"no channel accepted it: {first['message']}",
            )
        return {"results": results}

    async def send_to_user(self, user: str, body: Mapping[str, Any]) -> dict[str, Any]:
        subject = user_subject(self.node.settings.subject_prefix, _user(user))
        data = _data(body)
        if len(data) > self.node.settings.max_message_bytes:
            raise ApiError(
                413,
                ErrorCode.TOO_LARGE,
                f"data is {len(data)} bytes; at most {self.node.settings.max_message_bytes}",
            )
        await self._send(subject, data, self._headers())
        return {"user": user}

    async def disconnect(self, user: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Every connection of `user` on every edge closes with `code` (default 4003):
        the edges holding the user hear it on the user's subject."""
        subject = user_subject(self.node.settings.subject_prefix, _user(user))
        code = body.get("code", int(CloseCode.FORBIDDEN))
        if not isinstance(code, int) or isinstance(code, bool) or code not in DISCONNECT_CODES:
            raise bad_request("'code' must be 1000, 1008 or from 4000 to 4999")
        reason = body.get("reason", "revoked")
        if not isinstance(reason, str) or len(reason.encode()) > MAX_REASON_BYTES:
            raise bad_request(f"'reason' must be a string of at most {MAX_REASON_BYTES} bytes")
        headers = self._headers() | {DISCONNECT_HEADER: str(code)}
        await self._send(subject, reason.encode(), headers)
        return {"user": user, "code": code}

    async def revoke(self, user: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Tokens of `user` issued before `before` (default: now) are refused on every
        edge (403 / 4003), and the user's connections holding one close with 4003."""
        user = _user(user)
        now = time.time()
        before = body.get("before", now)
        if not is_number(before):
            raise bad_request("'before' must be a number: seconds since the epoch")
        if before > now + FUTURE_SLACK_S:
            raise bad_request("'before' must not be in the future")
        try:
            await self.node.backbone.put_revocation(entry_key(user), entry_value(before))
        except Unavailable as exc:
            raise ApiError(503, ErrorCode.UNAVAILABLE, f"not accepted: {exc}") from None
        return {"user": user, "before": before}

    async def _send(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        try:
            await self.node.backbone.publish(subject, data, headers)
        except Unavailable as exc:
            raise ApiError(503, ErrorCode.UNAVAILABLE, f"not accepted: {exc}") from None

    async def presence(self, channel: str) -> dict[str, Any]:
        channel = _channel(channel)
        if not self.node.policy_for(channel).presence:
            raise ApiError(404, ErrorCode.NOT_ENABLED, f"presence is off for '{channel}'")
        try:
            users = await self.node.presence.users(channel)
        except Unavailable as exc:
            raise ApiError(503, ErrorCode.UNAVAILABLE, str(exc)) from None
        return {"channel": channel, "users": users}

    async def history(self, channel: str, since: str | None, limit: str | None) -> dict[str, Any]:
        """Stored events after offset `since` (default: the oldest kept), at most `limit`."""
        node = self.node
        channel = _channel(channel)
        after = _count(since, "since", 0, 0, 2**63 - 1)
        count = _count(limit, "limit", HISTORY_LIMIT, 1, HISTORY_MAX)
        stream = node.directory.stream_for(channel)
        if stream is None:
            raise ApiError(404, ErrorCode.NOT_ENABLED, f"'{channel}' keeps no history")
        subject = channel_subject(node.settings.subject_prefix, channel)
        try:
            epoch = await node.backbone.stream_epoch(stream)
            last = await node.backbone.stream_last_offset(stream, subject)
            start = max(after + 1, await node.backbone.stream_first_offset(stream))
            events: list[dict[str, Any]] = []
            if start <= last:
                cursor = await node.backbone.open_cursor(stream, subject, start)
                try:
                    while len(events) < count:
                        batch = await cursor.fetch(count - len(events), HISTORY_WAIT_S)
                        if not batch:
                            break
                        events += [_stored(d.offset, d.data, d.headers) for d in batch]
                        if (batch[-1].offset or 0) >= last:
                            break
                finally:
                    await cursor.close()
        except Unavailable as exc:
            raise ApiError(503, ErrorCode.UNAVAILABLE, str(exc)) from None
        return {"channel": channel, "epoch": epoch, "offset": last, "events": events}


def _stored(offset: int | None, data: bytes, headers: Mapping[str, str] | None) -> dict[str, Any]:
    event: dict[str, Any] = {"offset": offset}
    try:
        event["data"] = decode_data(data)
    except ValueError:  # not UTF-8: said, not skipped
        event["data"], event["undecodable"] = None, True
    ts = (headers or {}).get(HEADER_TS)
    if ts is not None and ts.isdigit():
        event["ts"] = int(ts)
    return event
