"""The Server-Sent Events wire format of `GET /v1/sse`, without I/O (DESIGN §8).

Each server frame of the WebSocket protocol becomes one SSE event: `event:` is
the frame's `type`, `data:` its JSON (one line: frames are compact JSON, never
a raw newline). Every event carries an `id:` that encodes, for each history
channel of the stream, the offset and epoch of the newest event written, so a
client that comes back with `Last-Event-ID` is resubscribed exactly as with
`subscribe` + `since`: nothing lost, nothing twice.

The id is `1.` + base64url (no padding) of `{"<channel>": [offset, "<epoch>"], ...}`:
opaque to clients, ASCII (a header value), one line.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from edge.protocol import Position, encode
from switchboard.contract.channels import is_valid_channel

ID_VERSION = "1."
MAX_ID_LENGTH = 16 * 1024  # a Last-Event-ID longer than this is refused
KEEPALIVE = b": keepalive\n\n"
_TYPE_START = len(b'{"type":"')  # every frame starts with its type (edge.protocol.frame)
# A stored event as the hub encodes it: the channel first, offset and epoch last
# (edge.protocol.event_frame), so both are read without decoding `data`.
_STORED_EVENT = re.compile(
    rb'\{"type":"event","payload":\{"channel":"([A-Za-z0-9_:-]+)",.*'
    rb',"offset":(\d+),"epoch":"([^"\\]*)"\}\}',
    re.DOTALL,
)


class BadEventId(ValueError):
    """A `Last-Event-ID` this edge did not write."""


def frame_type(frame: bytes) -> bytes:
    """The `type` of an encoded server frame (`edge.protocol.frame` writes it first)."""
    end = frame.find(b'"', _TYPE_START)
    if not frame.startswith(b'{"type":"') or end < 0:
        raise ValueError("not a server frame")
    return frame[_TYPE_START:end]


def encode_id(positions: dict[str, Position]) -> bytes:
    doc = {channel: [p.offset, p.epoch] for channel, p in sorted(positions.items())}
    raw = base64.urlsafe_b64encode(encode(doc).encode()).rstrip(b"=")
    return ID_VERSION.encode() + raw


def decode_id(text: str) -> dict[str, Position]:
    """The positions a `Last-Event-ID` names; BadEventId when it is not one of ours."""
    if len(text) > MAX_ID_LENGTH:
        raise BadEventId(f"Last-Event-ID is longer than {MAX_ID_LENGTH} characters")
    if not text.startswith(ID_VERSION):
        raise BadEventId("Last-Event-ID is not an id this edge wrote")
    raw = text[len(ID_VERSION) :]
    try:
        doc = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise BadEventId("Last-Event-ID is not an id this edge wrote") from None
    if not isinstance(doc, dict):
        raise BadEventId("Last-Event-ID is not an id this edge wrote")
    positions: dict[str, Position] = {}
    for channel, value in doc.items():
        if (
            not is_valid_channel(channel)
            or not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], int)
            or isinstance(value[0], bool)
            or value[0] < 0
            or not isinstance(value[1], str)
        ):
            raise BadEventId(f"Last-Event-ID has a bad position for '{channel[:64]}'")
        positions[channel] = Position(value[0], value[1])
    return positions


class EventStream:
    """One stream's encoder: frames in, SSE bytes out, the positions kept on the way.

    A position moves with each `event` that carries an offset, and with a
    subscription's `ack` unless that ack says `recovered` (then the replay that
    follows moves it from where the client was)."""

    __slots__ = ("_id", "positions")

    def __init__(self, positions: dict[str, Position] | None = None) -> None:
        self.positions: dict[str, Position] = dict(positions or {})
        self._id: bytes | None = encode_id(self.positions) if self.positions else None

    def encode(self, frames: bytes) -> bytes:
        """One or more frames (separated by `\\n`, as the outbox joins them) as SSE events."""
        if b"\n" not in frames:
            return self._event(frames)
        return b"".join(self._event(frame) for frame in frames.split(b"\n"))

    def _event(self, frame: bytes) -> bytes:
        kind = frame_type(frame)
        head = b""
        if kind == b"event" and b'"offset":' in frame:
            stored = _STORED_EVENT.fullmatch(frame)
            if stored is not None:
                channel, offset, epoch = stored.groups()
                self._move(channel.decode(), int(offset), epoch.decode())
            else:  # (another shape: decoded)
                self._note(json.loads(frame)["payload"], acked=False)
        elif kind == b"ack" and b'"recovered":' in frame:
            self._note(json.loads(frame)["payload"], acked=True)
        elif kind == b"reconnect":  # EventSource waits this long before it comes back
            head = b"retry: %d\n" % int(json.loads(frame)["payload"]["after_ms"])
        if self._id is not None:
            head += b"id: " + self._id + b"\n"
        return head + b"event: " + kind + b"\ndata: " + frame + b"\n\n"

    def _note(self, payload: dict[str, Any], *, acked: bool) -> None:
        offset, epoch, channel = payload.get("offset"), payload.get("epoch"), payload["channel"]
        if not isinstance(offset, int) or not isinstance(epoch, str):
            return
        if acked and payload.get("recovered"):
            return  # the client's own position stands; the replay moves it
        self._move(channel, offset, epoch)

    def _move(self, channel: str, offset: int, epoch: str) -> None:
        self.positions[channel] = Position(offset, epoch)
        self._id = encode_id(self.positions)

    @staticmethod
    def closing(code: int, reason: str) -> bytes:
        """The last event of a stream the edge ends (the WebSocket's close code and reason)."""
        data = encode({"type": "close", "payload": {"code": code, "reason": reason}})
        return b"event: close\ndata: " + data.encode() + b"\n\n"
