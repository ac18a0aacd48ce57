"""The sans-I/O session, fed frames directly: no sockets, no NATS."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge import protocol
from edge.session import (
    Close,
    Limits,
    PresenceQuery,
    Publish,
    Rpc,
    Send,
    Session,
    Subscribe,
    Unsubscribe,
    welcome_frame,
)
from switchboard.contract.codes import ErrorCode
from switchboard.contract.errors import TokenRevoked
from switchboard.contract.settings import ChannelPolicy
from switchboard.contract.tokens import Claims, TokenError

NOW = 1000.0


def make_session(
    claims: Claims | None = None,
    policy: ChannelPolicy | None = None,
    limits: Limits | None = None,
    verify: Any = None,
) -> Session:
    def refuse_all(token: str) -> Claims:
        raise TokenError("invalid token")

    return Session(
        claims or Claims(sub="alice", exp=NOW + 3600),
        limits=limits or Limits(),
        policy_for=lambda channel: policy or ChannelPolicy(),
        verify=verify or refuse_all,
        now=NOW,
    )


def msg(kind: str, payload: dict[str, Any] | None = None, id: str | None = "1") -> str:
    obj: dict[str, Any] = {"type": kind, "payload": payload or {}}
    if id is not None:
        obj["id"] = id
    return json.dumps(obj)


def only_error(actions: list[Any]) -> dict[str, Any]:
    assert len(actions) == 1 and isinstance(actions[0], Send), actions
    frame: dict[str, Any] = json.loads(actions[0].text)
    assert frame["type"] == "error"
    return frame


@pytest.mark.parametrize(
    ("text", "code", "message", "echo_id"),
    [
        ("{not json", "bad_request", "malformed JSON", None),
        ("[1, 2]", "bad_request", "a message must be a JSON object", None),
        ('"subscribe"', "bad_request", "a message must be a JSON object", None),
        ('{"id": "7"}', "bad_request", "missing field 'type'", "7"),
        ('{"type": "dance", "id": "7"}', "unknown_type", "unknown type 'dance'", "7"),
        (
            '{"type": "subscribe", "id": 7}',
            "bad_request",
            "'id' must be a string of at most 128",
            None,
        ),
        (msg("subscribe", {}), "bad_request", "missing field 'channel'", "1"),
        (msg("subscribe", {"channel": 5}), "bad_request", "field 'channel' must be a string", "1"),
        (
            msg("subscribe", {"channel": "a.b"}),
            "bad_request",
            "invalid channel name: use [A-Za-z0-9_-] segments joined by ':'",
            "1",
        ),
        (
            msg("subscribe", {"channel": "a:"}),
            "bad_request",
            "invalid channel name: use [A-Za-z0-9_-] segments joined by ':'",
            "1",
        ),
        (
            msg("subscribe", {"channel": "*"}),
            "bad_request",
            "invalid channel name: use [A-Za-z0-9_-] segments joined by ':'",
            "1",
        ),
        (msg("publish", {"channel": "chat"}), "bad_request", "missing field 'data'", "1"),
        (msg("rpc", {"data": 1}), "bad_request", "missing field 'method'", "1"),
        (
            msg("rpc", {"method": "a b"}),
            "bad_request",
            "invalid method name: use [A-Za-z0-9_-] segments joined by '.'",
            "1",
        ),
        (
            msg("rpc", {"method": "m", "timeout_ms": 0}),
            "bad_request",
            "'timeout_ms' must be 1..30000",
            "1",
        ),
        (
            msg("rpc", {"method": "m", "timeout_ms": True}),
            "bad_request",
            "field 'timeout_ms' must be an integer",
            "1",
        ),
        (msg("refresh", {}), "bad_request", "missing field 'token'", "1"),
        (
            '{"type": "publish", "id": "1", "payload": []}',
            "bad_request",
            "'payload' must be an object",
            "1",
        ),
        (
            msg("subscribe", {"channel": "c", "since": 5}),
            "bad_request",
            "field 'since' must be an object",
            "1",
        ),
        (
            msg("subscribe", {"channel": "c", "since": {"offset": -1, "epoch": "e"}}),
            "bad_request",
            "'since.offset' must be an integer >= 0",
            "1",
        ),
        (
            msg("subscribe", {"channel": "c", "since": {"offset": 3}}),
            "bad_request",
            "'since.epoch' must be a string",
            "1",
        ),
        # values that could not be sent on again are refused at the door, not crashed on
        (
            '{"type":"publish","payload":{"channel":"c","data":NaN}}',
            "bad_request",
            "malformed JSON",
            None,
        ),
        (
            '{"type":"publish","payload":{"channel":"c","data":-Infinity}}',
            "bad_request",
            "malformed JSON",
            None,
        ),
        (
            '{"type":"publish","payload":{"channel":"c","data":1e999}}',
            "bad_request",
            "malformed JSON",
            None,
        ),
        (
            '{"type":"publish","payload":{"channel":"c","data":"\\ud800"}}',
            "bad_request",
            "malformed JSON",
            None,
        ),
        (
            '{"type":"subscribe","id":"\\udfff","payload":{"channel":"c"}}',
            "bad_request",
            "malformed JSON",
            None,
        ),
    ],
)
def test_bad_input_gets_an_exact_error(
    text: str, code: str, message: str, echo_id: str | None
) -> None:
    frame = only_error(make_session().receive(text, NOW))
    assert frame["payload"] == {"code": code, "message": message, "retryable": False}
    assert frame.get("id") == echo_id


def test_subscribe_and_unsubscribe_are_actions() -> None:
    session = make_session()
    assert session.receive(msg("subscribe", {"channel": "chat:lobby"}), NOW) == [
        Subscribe("1", "chat:lobby")
    ]
    assert session.subscriptions == {"chat:lobby"}
    assert session.receive(msg("unsubscribe", {"channel": "chat:lobby"}, "2"), NOW) == [
        Unsubscribe("2", "chat:lobby")
    ]
    assert session.subscriptions == set()


def test_subscribe_outside_token_patterns_is_forbidden() -> None:
    session = make_session(Claims(sub="alice", exp=NOW + 60, channels=("news:*",)))
    assert session.receive(msg("subscribe", {"channel": "news:eu"}), NOW) == [
        Subscribe("1", "news:eu")
    ]
    frame = only_error(session.receive(msg("subscribe", {"channel": "chat"}, "2"), NOW))
    assert frame["payload"]["code"] == "forbidden"
    assert session.subscriptions == {"news:eu"}


@pytest.mark.parametrize(
    ("claims", "policy", "allowed"),
    [
        (Claims("a", NOW + 9), ChannelPolicy(), True),
        (Claims("a", NOW + 9, publish=("chat:*",)), ChannelPolicy(), True),
        (Claims("a", NOW + 9, publish=("news",)), ChannelPolicy(), False),
        (Claims("a", NOW + 9), ChannelPolicy(client_publish=False), False),
        (Claims("a", NOW + 9), ChannelPolicy(publish_roles=["member"]), False),
        (Claims("a", NOW + 9, roles=("member",)), ChannelPolicy(publish_roles=["member"]), True),
    ],
)
def test_publish_authorization(claims: Claims, policy: ChannelPolicy, allowed: bool) -> None:
    actions = make_session(claims, policy).receive(
        msg("publish", {"channel": "chat:x", "data": {"t": 1}}), NOW
    )
    if allowed:
        assert actions == [Publish("1", "chat:x", b'{"t":1}', None)]
    else:
        assert only_error(actions)["payload"]["code"] == "forbidden"


def test_subscribe_needs_role_when_policy_says_so() -> None:
    policy = ChannelPolicy(subscribe_roles=["vip"])
    assert (
        only_error(make_session(policy=policy).receive(msg("subscribe", {"channel": "c"}), NOW))[
            "payload"
        ]["code"]
        == "forbidden"
    )
    vip = make_session(Claims("a", NOW + 9, roles=("vip",)), policy)
    assert vip.receive(msg("subscribe", {"channel": "c"}), NOW) == [Subscribe("1", "c")]


def test_valid_surrogate_pairs_pass() -> None:
    actions = make_session().receive(
        '{"type":"publish","payload":{"channel":"c","data":"\\ud83d\\ude00"}}', NOW
    )
    assert actions == [Publish(None, "c", '"\U0001f600"'.encode(), None)]


def test_publish_carries_msg_id_and_compact_data() -> None:
    actions = make_session().receive(
        msg("publish", {"channel": "c", "data": {"a": [1, 2], "é": "x"}, "msg_id": "m1"}), NOW
    )
    assert actions == [Publish("1", "c", '{"a":[1,2],"é":"x"}'.encode(), "m1")]


def test_publish_larger_than_channel_limit_is_too_large() -> None:
    session = make_session(policy=ChannelPolicy(max_message_bytes=10))
    frame = only_error(session.receive(msg("publish", {"channel": "c", "data": "x" * 20}), NOW))
    assert frame["payload"]["code"] == "too_large"


def test_subscription_limit() -> None:
    session = make_session(limits=Limits(max_subscriptions=2))
    for i in range(2):
        assert isinstance(
            session.receive(msg("subscribe", {"channel": f"c{i}"}), NOW)[0], Subscribe
        )
    frame = only_error(session.receive(msg("subscribe", {"channel": "c9"}), NOW))
    assert frame["payload"]["code"] == "limit_exceeded"
    # re-subscribing to a channel already held is not a new subscription
    assert session.receive(msg("subscribe", {"channel": "c0"}), NOW) == [Subscribe("1", "c0")]


def test_rpc_defaults_and_in_flight_limit() -> None:
    session = make_session(limits=Limits(max_rpcs_in_flight=1))
    assert session.receive(msg("rpc", {"method": "chat.history", "data": [1]}), NOW) == [
        Rpc("1", "chat.history", b"[1]", 5.0)
    ]
    frame = only_error(session.receive(msg("rpc", {"method": "m"}, "2"), NOW))
    assert frame["payload"]["code"] == "limit_exceeded"
    session.rpc_finished()
    assert session.receive(msg("rpc", {"method": "m", "timeout_ms": 250}, "3"), NOW) == [
        Rpc("3", "m", b"null", 0.25)
    ]


def test_rate_limit_then_policy_close() -> None:
    session = make_session(limits=Limits(rate_per_s=10, rate_burst=5, abuse_errors=10))
    frames = [session.receive(msg("subscribe", {"channel": "c"}), NOW) for _ in range(5)]
    assert all(isinstance(f[0], Subscribe) for f in frames)
    refused = session.receive(msg("subscribe", {"channel": "c"}), NOW)
    assert only_error(refused)["payload"] == {
        "code": "rate_limited",
        "message": "over the message rate limit",
        "retryable": True,
    }
    # tokens come back with time
    assert isinstance(session.receive(msg("subscribe", {"channel": "c"}), NOW + 0.1)[0], Subscribe)
    actions: list[Any] = []
    for _ in range(20):
        actions = session.receive(msg("subscribe", {"channel": "c"}), NOW + 0.1)
        if session.closed:
            break
    assert actions[-1] == Close(1008, "too many bad messages")
    assert session.receive(msg("subscribe", {"channel": "c"}), NOW + 5) == []


def test_repeated_bad_frames_close_with_1008_only_within_window() -> None:
    slow = make_session(limits=Limits(abuse_errors=3, abuse_window_s=10))
    for t in (0, 6, 12, 18):  # never three in ten seconds
        assert not any(isinstance(a, Close) for a in slow.receive("nope", NOW + t))
    fast = make_session(limits=Limits(abuse_errors=3, abuse_window_s=10))
    fast.receive("nope", NOW)
    fast.receive("nope", NOW + 1)
    actions = fast.receive("nope", NOW + 2)
    assert isinstance(actions[0], Send)
    assert actions[-1] == Close(1008, "too many bad messages")


def test_backend_side_errors_do_not_count_as_abuse() -> None:
    session = make_session(limits=Limits(abuse_errors=2))
    for _ in range(5):
        actions = session.refuse("1", ErrorCode.TIMEOUT, "slow", NOW)
        assert len(actions) == 1
    assert not session.closed


def test_binary_frame_closes_1003() -> None:
    session = make_session()
    assert session.receive_binary() == [Close(1003, "binary frames are not supported")]
    assert session.closed


def test_token_expiry_closes_4001_and_refresh_extends() -> None:
    new = Claims(sub="alice", exp=NOW + 7200)
    session = make_session(Claims("alice", NOW + 60), verify=lambda t: new)
    assert session.check_expiry(NOW + 30) == []
    answer = session.receive(msg("refresh", {"token": "fresh"}), NOW + 30)
    assert answer == [Send('{"type":"ack","id":"1","payload":{"expires_at":8200}}')]
    assert session.check_expiry(NOW + 61) == []
    assert session.check_expiry(NOW + 7200) == [Close(4001, "token expired")]


def test_refresh_for_another_user_or_invalid_token() -> None:
    other = make_session(verify=lambda t: Claims(sub="mallory", exp=NOW + 99))
    assert only_error(other.receive(msg("refresh", {"token": "x"}), NOW))["payload"]["code"] == (
        "forbidden"
    )
    bad = make_session()
    frame = only_error(bad.receive(msg("refresh", {"token": "x"}), NOW))
    assert frame["payload"] == {
        "code": "unauthorized",
        "message": "invalid token",
        "retryable": False,
    }


def test_refresh_with_a_revoked_token_is_forbidden() -> None:
    def revoked(token: str) -> Claims:
        raise TokenRevoked("token revoked")

    session = make_session(verify=revoked)
    frame = only_error(session.receive(msg("refresh", {"token": "old"}), NOW))
    assert frame["payload"] == {
        "code": "forbidden",
        "message": "token revoked",
        "retryable": False,
    }
    assert session.claims.sub == "alice"  # the connection keeps its token


def test_presence_not_enabled_without_channel_config() -> None:
    frame = only_error(make_session().receive(msg("presence", {"channel": "c"}), NOW))
    assert frame["payload"]["code"] == "not_enabled"


def test_welcome_frame() -> None:
    frame = json.loads(make_session().welcome("s1", "edge-1", 30).text)
    assert frame["type"] == "welcome"
    assert "id" not in frame
    assert frame["payload"]["session"] == "s1"
    assert frame["payload"]["node"] == "edge-1"
    assert frame["payload"]["ping_interval_s"] == 30
    assert frame["payload"]["limits"]["max_message_bytes"] == 65536
    assert frame["payload"]["limits"]["rate_per_s"] == 100


def test_presence_query_where_enabled_and_allowed() -> None:
    on = ChannelPolicy(presence=True)
    assert make_session(policy=on).receive(msg("presence", {"channel": "room"}), NOW) == [
        PresenceQuery("1", "room")
    ]
    outsider = make_session(Claims("eve", NOW + 60, channels=("other",)), policy=on)
    frame = only_error(outsider.receive(msg("presence", {"channel": "room"}), NOW))
    assert frame["payload"]["code"] == "forbidden"


def nested(depth: int, leaf: str = "1") -> str:
    """`data` text with arrays and objects alternating `depth` levels deep."""
    text = leaf
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"k":{text}}}'
    return text


def publish_text(data: str, id: str | None = "1") -> str:
    head = f'"id":"{id}",' if id is not None else ""
    return '{"type":"publish",' + head + '"payload":{"channel":"c","data":' + data + "}}"


def test_data_nested_at_the_limit_is_accepted_and_encodes_for_delivery() -> None:
    actions = make_session().receive(publish_text(nested(64)), NOW)
    assert len(actions) == 1 and isinstance(actions[0], Publish)
    # what the hub will make of it: the same value, inside an event frame
    data = json.loads(actions[0].body)
    assert data == json.loads(nested(64))
    assert json.loads(protocol.event_frame("c", data, ts=1, sender="a"))["payload"]["data"] == data


@pytest.mark.parametrize("depth", [65, 200, 600])
def test_data_nested_deeper_than_the_limit_is_refused_before_any_ack(depth: int) -> None:
    for text in (
        publish_text(nested(depth)),
        '{"type":"rpc","id":"1","payload":{"method":"m","data":' + nested(depth) + "}}",
        '{"type":"subscribe","id":"1","payload":{"channel":"c","x":' + nested(depth) + "}}",
    ):
        frame = only_error(make_session().receive(text, NOW))
        assert frame == {
            "type": "error",
            "id": "1",
            "payload": {
                "code": "bad_request",
                "message": "JSON nested deeper than 64 levels",
                "retryable": False,
            },
        }


def test_nesting_beyond_what_the_decoder_can_read_gets_the_same_answer() -> None:
    frame = only_error(make_session().receive(publish_text("[" * 5000 + "]" * 5000), NOW))
    assert frame["payload"]["message"] == "JSON nested deeper than 64 levels"
    assert "id" not in frame  # the decoder gave up before the id could be read


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    data = json.dumps({"text": "[" * 500 + "{" * 500})
    assert isinstance(make_session().receive(publish_text(data), NOW)[0], Publish)


def test_a_lone_surrogate_handed_in_as_text_is_malformed() -> None:
    """websockets never yields one, but the session must not trust its caller for it."""
    text = publish_text('"\ud800"')
    assert only_error(make_session().receive(text, NOW))["payload"]["message"] == "malformed JSON"


@pytest.mark.parametrize(
    ("session_id", "node", "user", "ping", "exp", "limits"),
    [
        ("s1", "edge-1", "alice", 30, NOW + 3600, Limits()),
        (
            "0123456789ab",
            "edge-7f9c-x",
            "bob@example.com",
            12.5,
            1.5e9 + 0.9,
            Limits(rate_per_s=7.25),
        ),
        ("s", 'pod "quoted" \\ é ü\n\t', "u=+_-", 0.001, 2**40, Limits(max_message_bytes=1)),
    ],
)
def test_welcome_is_the_frame_its_definition_makes(
    session_id: str, node: str, user: str, ping: float, exp: float, limits: Limits
) -> None:
    """`Session.welcome` assembles the frame from parts cached per edge: byte for byte
    what `welcome_frame` (protocol.frame) writes, for any node name and limits."""
    session = make_session(Claims(sub=user, exp=exp), limits=limits)
    for _ in range(2):  # the second time from the cached parts
        text = session.welcome(session_id, node, ping).text
        assert text == welcome_frame(session_id, node, user, ping, int(exp), limits)
    assert json.loads(text)["payload"]["node"] == node
