"""Drive the sans-I/O core with grammar inputs and check the protocol's promises.

Promises checked on every input:
- a defined answer: at least one action unless the session was already closed;
  error frames carry a known code, closes a documented code;
- no exception escapes the Session or the hub;
- every frame the edge would send is one line of strict JSON that re-encodes
  to exactly the same text;
- anything the edge would ack (publish, rpc) decodes back to the same value and
  encodes into an `event` frame for delivery;
- a backend message is delivered (the same JSON, or its text as a string) or
  counted as dropped, and dropped only when it is not UTF-8 / not a frame.

The hub's backbone and the connections here are stand-ins (`StandInBackbone`,
`Recorder`): what is fuzzed is the decode/encode path between them; the real
NATS path is covered by tests/integration/test_nesting.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from edge import protocol
from edge.hub import Hub, decode_data
from edge.ports import Delivery
from edge.session import (
    Action,
    Close,
    Limits,
    PresenceQuery,
    Publish,
    Rpc,
    Send,
    Session,
    Subscribe,
    Unsubscribe,
)
from switchboard.contract.channels import is_valid_channel, is_valid_method
from switchboard.contract.codes import CloseCode, ErrorCode
from switchboard.contract.settings import ChannelPolicy
from switchboard.contract.tokens import Claims, TokenError
from tests.fuzz.grammar import Source, backend_body, backend_headers, client_frame, presence_frame

NOW = 1000.0
logging.getLogger("switchboard.edge.hub").setLevel(logging.ERROR)  # drops are expected here
ERROR_CODES = {code.value for code in ErrorCode}
SESSION_CLOSES = {CloseCode.UNSUPPORTED_DATA, CloseCode.POLICY_VIOLATION, CloseCode.TOKEN_EXPIRED}
SERVER_TYPES = {"ack", "error", "event", "join", "leave", "welcome"}
BURSTS = [  # N becomes the frame's number
    '{"type":"subscribe","payload":{"channel":"cN"}}',
    '{"type":"subscribe","payload":{"channel":"vip:N"}}',
    '{"type":"subscribe","payload":{"channel":"c","since":{"offset":N,"epoch":N}}}',
    '{"type":"rpc","id":"N","payload":{"method":"m","data":N}}',
    '{"type":"publish","payload":{"channel":"small:x","data":"' + "x" * 30 + 'N"}}',
    '{"type":"presence","payload":{"channel":"px:N"}}',
]


class FuzzFailure(AssertionError):
    """A broken promise (distinct from a bug in the harness itself)."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise FuzzFailure(what)


def server_frame(data: str | bytes) -> dict[str, Any]:
    """One frame the edge would send: a strict one-line JSON object that round-trips."""
    text = data.decode() if isinstance(data, bytes) else data
    check("\n" not in text, f"raw newline in a server frame: {text[:200]!r}")
    obj = protocol.loads(text)
    check(isinstance(obj, dict), f"server frame is not an object: {text[:200]!r}")
    check(protocol.encode(obj) == text, f"server frame does not round-trip: {text[:200]!r}")
    check(json.loads(text) == obj, "the standard decoder reads it differently")
    check(obj.get("type") in SERVER_TYPES, f"unexpected frame type {obj.get('type')!r}")
    result: dict[str, Any] = obj
    return result


def policy_for(channel: str) -> ChannelPolicy:
    """Channel names pick the policy, so the grammar reaches every refusal."""
    if channel.startswith("ro:"):
        return ChannelPolicy(client_publish=False)
    if channel.startswith(("p:", "px:")):  # px: is outside the token's patterns
        return ChannelPolicy(presence=True)
    if channel.startswith("small:"):
        return ChannelPolicy(max_message_bytes=32)
    if channel.startswith("vip:"):
        return ChannelPolicy(subscribe_roles=["vip"], publish_roles=["vip"])
    return ChannelPolicy()


def verify(token: str) -> Claims:
    if token == "good":
        return Claims("alice", NOW + 7200)
    if token == "other":
        return Claims("mallory", NOW + 7200)
    raise TokenError("invalid token")


def new_session() -> Session:
    """Default limits: ten bad frames close it (1008); the harness then starts anew."""
    return Session(
        Claims("alice", NOW + 60, channels=("c*", "ro:*", "p:*", "small:*", "a*")),
        limits=Limits(),
        policy_for=policy_for,
        verify=verify,
        now=NOW,
    )


class Recorder:
    """Stands in for a connection: keeps what the hub hands it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)

    def deliver_stored(self, channel: str, offset: int, frame: bytes) -> None:
        self.frames.append(frame)

    def disconnect(self, code: int, reason: str) -> None:
        self.frames.append(f"disconnect {code} {reason}".encode())


class _Handle:
    async def unsubscribe(self) -> None:
        return None


class StandInBackbone:
    """Stands in for NATS: keeps each subscription's handler so deliveries can be fed in."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Delivery], None]] = {}

    async def subscribe(
        self, subject: str, handler: Callable[[Delivery], None], **kwargs: Any
    ) -> _Handle:
        self.handlers[subject] = handler
        return _Handle()

    async def subscribe_stream(
        self, subject: str, stream: str, handler: Callable[[Delivery], None], **kwargs: Any
    ) -> _Handle:
        self.handlers[subject] = handler
        return _Handle()

    async def stream_epoch(self, stream: str) -> str:
        return "epoch-1"

    async def stream_last_offset(self, stream: str, subject: str) -> int:
        return 0


class Core:
    """One session and one hub with a plain, a history and a presence topic."""

    PLAIN, STORED, FEED = "sb.ch.news", "sb.ch.hist", "sb.presence.p.room"

    def __init__(self) -> None:
        self.session = new_session()
        self.backbone = StandInBackbone()
        self.hub = Hub(
            self.backbone,  # type: ignore[arg-type]  # a stand-in, see the module docstring
            "sb",
            expose_publisher=True,
            stream_for=lambda channel: "HIST" if channel == "hist" else None,
        )
        self.member = Recorder()
        self.offset = 0
        self.now = NOW
        self.hold_rpcs = False  # leave RPCs in flight, so the in-flight limit is reached
        asyncio.run(self._join())

    async def _join(self) -> None:
        await self.hub.join_channel("news", self.member)
        await self.hub.join_channel("hist", self.member)
        await self.hub.join_presence_feed("p:room", self.member)
        self.feed_subject = next(
            s for s in self.backbone.handlers if "news" not in s and "hist" not in s
        )

    # -- client side --------------------------------------------------------

    def client(self, text: str) -> None:
        """Feed one client frame; check every action against the promises."""
        was_closed = self.session.closed
        actions = self.session.receive(text, self.now)
        check(was_closed or bool(actions), f"no answer to {text[:200]!r}")
        self.actions(actions)

    def actions(self, actions: list[Action]) -> None:
        for action in actions:
            self.action(action)
        if self.session.closed:  # start over, so later inputs reach the handlers again
            check(self.session.receive('{"type":"publish"}', self.now) == [], "closed, answered")
            self.session = new_session()
            self.now = NOW

    def event(self, src: Source) -> None:
        """What else happens to a session: time, binary frames, expiry, failures, bursts."""
        what = src.pick(["time", "binary", "expiry", "welcome", "failed", "burst", "hold"])
        if what == "time":
            self.now += src.pick([0.001, 0.5, 5.0, 11.0, 30.0])
        elif what == "binary":
            self.actions(self.session.receive_binary())
        elif what == "expiry":
            self.now += src.pick([1.0, 59.0, 61.0])
            actions = self.session.check_expiry(self.now)
            check(actions in ([], [Close(CloseCode.TOKEN_EXPIRED, "token expired")]), "expiry")
            self.actions(actions)
        elif what == "welcome":
            welcome = server_frame(self.session.welcome("s1", "edge-1", 30).text)
            check(welcome["payload"]["user"] == self.session.user, "welcome names another user")
        elif what == "failed":
            for channel in tuple(self.session.subscriptions)[:1]:
                self.session.subscribe_failed(channel)
                check(channel not in self.session.subscriptions, "failed subscription kept")
        elif what == "burst":  # many frames at once: every limit, at rates in and over
            template = src.pick(BURSTS)
            step = src.pick([0.0, 0.011])  # 0.011 s apart stays under 100 messages/s
            for n in range(src.pick([20, 300])):
                self.now += step
                self.client(template.replace("N", str(n)))
        else:
            self.hold_rpcs = not self.hold_rpcs

    def action(self, action: Action) -> None:
        match action:
            case Send(text):
                frame = server_frame(text)
                check(frame["type"] in {"ack", "error"}, f"session sent {frame['type']}")
                if frame["type"] == "error":
                    check(frame["payload"]["code"] in ERROR_CODES, f"unknown code in {text}")
            case Close(code, reason):
                check(code in SESSION_CLOSES, f"undocumented close {code}")
                check(len(reason.encode()) <= 123, "close reason too long for a close frame")
            case Publish(request_id, channel, body, _msg_id):
                check(is_valid_channel(channel), f"published to invalid {channel!r}")
                check(len(body) <= policy_for(channel).max_message_bytes, "over the size limit")
                self.deliverable(channel, body)
                server_frame(protocol.ack(request_id, {"channel": channel}))
            case Rpc(request_id, method, body, timeout_s):
                check(is_valid_method(method), f"rpc to invalid {method!r}")
                check(0 < timeout_s <= 30, f"timeout {timeout_s}")
                check(decode_data(body) == json.loads(body), "rpc body does not decode back")
                if not self.hold_rpcs:
                    self.session.rpc_finished()
            case Subscribe(request_id, channel) | Unsubscribe(request_id, channel):
                check(is_valid_channel(channel), f"subscribed to invalid {channel!r}")
                server_frame(protocol.ack(request_id, {"channel": channel, "offset": None}))
            case PresenceQuery(request_id, channel):
                server_frame(protocol.ack(request_id, {"channel": channel, "users": ["alice"]}))

    def deliverable(self, channel: str, body: bytes) -> None:
        """An acked publish reaches subscribers as the very same value."""
        data = decode_data(body)
        check(data == json.loads(body), f"acked data comes back changed: {body[:200]!r}")
        headers = {"Sb-From": "alice", "Sb-Ts": "1700000000000"}
        frame = server_frame(self.hub.encode_event(channel, data, headers).encode())
        check(frame["payload"]["data"] == data, "event data differs from what was acked")
        delivery = Delivery("sb.ch.x", body, headers, offset=7)
        server_frame(self.hub.stored_event(channel, data, delivery, "epoch-1"))

    # -- backend side -------------------------------------------------------

    def backend(self, body: bytes, headers: dict[str, str] | None, stored: bool) -> None:
        """One message from NATS: delivered as a valid event, or counted as dropped."""
        before, dropped = len(self.member.frames), self.hub.dropped
        subject = self.STORED if stored else self.PLAIN
        self.offset += 1
        delivery = Delivery(subject, body, headers, offset=self.offset if stored else None)
        self.backbone.handlers[subject](delivery)
        if self.hub.dropped == dropped + 1:
            check(len(self.member.frames) == before, "dropped and delivered")
            check(not _utf8(body), f"dropped a UTF-8 body: {body[:200]!r}")
            return
        check(len(self.member.frames) == before + 1, "neither delivered nor counted")
        frame = server_frame(self.member.frames[-1])
        check(frame["type"] == "event", "not an event")
        expected = strict_json(body)
        if expected is not _NOT_JSON:
            check(frame["payload"]["data"] == expected, f"JSON body changed: {body[:200]!r}")
        else:
            check(frame["payload"]["data"] == body.decode(), "fallback is not the body's text")
        self.member.frames.clear()

    def presence(self, body: bytes) -> None:
        before, dropped = len(self.member.frames), self.hub.dropped
        self.backbone.handlers[self.feed_subject](Delivery(self.feed_subject, body, None))
        if self.hub.dropped == dropped + 1:
            check(len(self.member.frames) == before, "dropped and forwarded")
            return
        check(len(self.member.frames) == before + 1, "neither forwarded nor counted")
        server_frame_loose(self.member.frames.pop())

    def run(self, src: Source) -> None:
        """One input of the grammar, on whichever side it picks."""
        side = src.pick(["client", "client", "client", "backend", "presence", "event"])
        if side == "client":
            self.client(client_frame(src))
        elif side == "event":
            self.event(src)
        elif side == "backend":
            self.backend(backend_body(src), backend_headers(src), src.pick([False, True]))
        else:
            self.presence(presence_frame(src))


def server_frame_loose(data: bytes) -> None:
    """A forwarded frame keeps its publisher's spacing: one line of strict JSON, an object."""
    check(b"\n" not in data, "raw newline forwarded")
    check(isinstance(protocol.loads(data), dict), "forwarded frame is not an object")


_NOT_JSON = object()


def strict_json(body: bytes) -> Any:
    """What the body means as strict JSON within the nesting limit, decided independently."""
    try:
        text = body.decode()
        value = json.loads(text, parse_constant=_refuse)
    except (ValueError, RecursionError):
        return _NOT_JSON
    if "\\ud" in text.lower():
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            return _NOT_JSON
    if _depth(value) > protocol.MAX_DEPTH or _has_infinity(value):
        return _NOT_JSON
    return value


def _refuse(name: str) -> Any:
    raise ValueError(name)


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _has_infinity(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and item in (float("inf"), float("-inf")):
            return True
        if isinstance(item, dict | list):
            stack.extend(item.values() if isinstance(item, dict) else item)
    return False


def _utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True
