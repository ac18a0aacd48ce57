"""The edge↔operator messages: every one survives encode → decode, reads what the
edge writes today, and bad input fails with a MessageError naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from switchboard.contract.errors import InvalidInput, MessageError
from switchboard.contract.messages import (
    ChannelUsage,
    ControlReply,
    DrainCommand,
    DrainGrant,
    DrainRequest,
    EdgeStats,
    RateCommand,
    ShedCommand,
    decode_command,
)

STATS = EdgeStats(
    pod="edge-1",
    connections=12,
    subscriptions=3,
    draining=True,
    accepting=False,
    ts=1_795_315_319_296,
    channels={"chat": ChannelUsage(subscribers=4, published=9), "news": ChannelUsage()},
)

ROUND_TRIPS: list[tuple[Any, Any]] = [
    (STATS, EdgeStats.decode),
    (EdgeStats("edge-2"), EdgeStats.decode),
    (DrainRequest("edge-1", 10, "prestop"), DrainRequest.decode),
    (DrainGrant(125.0, 1_795_315_319_296_000_000), DrainGrant.decode),
    (DrainGrant(0.5), DrainGrant.decode),
    (DrainCommand(), decode_command),
    (DrainCommand("rollout"), decode_command),
    (RateCommand(20.0, 7), decode_command),
    (RateCommand(3.25), decode_command),
    (ShedCommand(40, 12.5, 9), decode_command),
    (ShedCommand(0, 1.0), decode_command),
    (ShedCommand(3, 2.0, reason="test"), decode_command),
    (EdgeStats("edge-3", connections=90, shedding=True, shed_pending=30), EdgeStats.decode),
    (ControlReply(True, connections=10), ControlReply.decode),
    (ControlReply(True), ControlReply.decode),
    (ControlReply(False, error="unknown command 'x'"), ControlReply.decode),
]


@pytest.mark.parametrize(("message", "decode"), ROUND_TRIPS, ids=repr)
def test_every_message_survives_a_round_trip(message: Any, decode: Any) -> None:
    encoded = message.encode()
    assert isinstance(encoded, bytes)
    assert decode(encoded) == message
    assert type(decode(encoded)) is type(message)


# What edges and operators put on the wire before these types existed: still read the same.
WIRE: list[tuple[Any, bytes, Any]] = [
    (
        EdgeStats.decode,
        b'{"pod": "edge-1", "connections": 2, "subscriptions": 1, "draining": false, '
        b'"accepting": true, "ts": 5, "channels": {"chat": {"subscribers": 2, "published": 0}}}',
        EdgeStats("edge-1", 2, 1, False, True, 5, {"chat": ChannelUsage(2, 0)}),
    ),
    (
        DrainRequest.decode,
        b'{"pod": "edge-ctl", "connections": 10, "reason": "operator"}',
        DrainRequest("edge-ctl", 10, "operator"),
    ),
    (DrainGrant.decode, b'{"reconnects_per_second": 20}', DrainGrant(20.0)),
    (DrainGrant.decode, b'{"reconnects_per_second": 1, "seq": 10}', DrainGrant(1.0, 10)),
    (DrainGrant.decode, b'{"reconnects_per_second": 2.5, "seq": null}', DrainGrant(2.5)),
    (decode_command, b'{"command": "drain"}', DrainCommand("operator")),
    (
        decode_command,
        b'{"command": "rate", "reconnects_per_second": 1000, "seq": 20}',
        RateCommand(1000.0, 20),
    ),
    (ControlReply.decode, b'{"ok": true, "connections": 10}', ControlReply(True, 10)),
]


@pytest.mark.parametrize(("decode", "data", "expected"), WIRE)
def test_reads_what_is_on_the_wire_today(decode: Any, data: bytes, expected: Any) -> None:
    assert decode(data) == expected


def test_a_rate_command_is_a_pace_as_a_grant_is() -> None:
    command = decode_command(RateCommand(5.0, 2).encode())
    assert isinstance(command, DrainGrant)
    assert json.loads(command.encode()) == {
        "command": "rate",
        "reconnects_per_second": 5.0,
        "seq": 2,
    }
    assert json.loads(DrainGrant(5.0, 2).encode()) == {"reconnects_per_second": 5.0, "seq": 2}


def test_absent_stats_fields_take_the_defaults_the_operator_assumed() -> None:
    stats = EdgeStats.decode(b'{"pod": "old-edge", "channels": {"chat": {}}}')
    assert (stats.connections, stats.draining, stats.accepting) == (0, False, True)
    assert stats.usage("chat") == ChannelUsage(0, 0)
    assert stats.usage("no-such-channel") == ChannelUsage(0, 0)


BAD: list[tuple[Any, bytes, str]] = [
    (EdgeStats.decode, b"not json", "edge stats: not JSON"),
    (EdgeStats.decode, b"\xff\xfe\x00", "edge stats: not JSON"),
    (EdgeStats.decode, b"[1, 2]", "edge stats: expected a JSON object, got list"),
    (EdgeStats.decode, b"{}", "edge stats: 'pod' is missing"),
    (EdgeStats.decode, b'{"pod": ""}', "edge stats: 'pod' must not be empty"),
    (EdgeStats.decode, b'{"pod": 7}', "edge stats: 'pod' must be a string"),
    (EdgeStats.decode, b'{"pod": "e", "connections": "3"}', "'connections' must be a whole"),
    (EdgeStats.decode, b'{"pod": "e", "connections": -1}', "'connections' must be a whole"),
    (EdgeStats.decode, b'{"pod": "e", "connections": true}', "'connections' must be a whole"),
    (EdgeStats.decode, b'{"pod": "e", "connections": 1.5}', "'connections' must be a whole"),
    (EdgeStats.decode, b'{"pod": "e", "draining": 1}', "'draining' must be true or false"),
    (EdgeStats.decode, b'{"pod": "e", "channels": []}', "'channels' must be an object"),
    (EdgeStats.decode, b'{"pod": "e", "channels": {"c": 3}}', "channels.c must be an object"),
    (
        EdgeStats.decode,
        b'{"pod": "e", "channels": {"c": {"subscribers": "x"}}}',
        "edge stats: channels.c: 'subscribers' must be a whole number",
    ),
    (DrainRequest.decode, b'{"connections": 3}', "drain request: 'pod' is missing"),
    (DrainRequest.decode, b'{"pod": "e", "reason": 5}', "drain request: 'reason' must be a str"),
    (DrainGrant.decode, b"{}", "drain grant: 'reconnects_per_second' is missing"),
    (DrainGrant.decode, b'{"reconnects_per_second": 0}', "'reconnects_per_second' must be a num"),
    (DrainGrant.decode, b'{"reconnects_per_second": -3}', "'reconnects_per_second' must be a n"),
    (DrainGrant.decode, b'{"reconnects_per_second": "fast"}', "'reconnects_per_second' must be"),
    (DrainGrant.decode, b'{"reconnects_per_second": true}', "'reconnects_per_second' must be"),
    (DrainGrant.decode, b'{"reconnects_per_second": 1e999}', "'reconnects_per_second' must be"),
    (DrainGrant.decode, b'{"reconnects_per_second": 1, "seq": "2"}', "'seq' must be a whole"),
    (DrainGrant.decode, b'{"reconnects_per_second": 1, "seq": true}', "'seq' must be a whole"),
    (decode_command, b"nonsense", "control command: not JSON"),
    (decode_command, b'{"reason": "x"}', "control command: 'command' is missing"),
    (decode_command, b'{"command": 1}', "control command: 'command' must be a string"),
    (decode_command, b'{"command": "reboot"}', "control command: unknown command 'reboot'"),
    (decode_command, b'{"command": "drain", "reason": []}', "'reason' must be a string"),
    (decode_command, b'{"command": "rate"}', "'reconnects_per_second' is missing"),
    (decode_command, b'{"command": "shed", "reconnects_per_second": 5}', "'connections' is miss"),
    (
        decode_command,
        b'{"command": "shed", "connections": -1, "reconnects_per_second": 5}',
        "control command: 'connections' must be a whole number",
    ),
    (decode_command, b'{"command": "shed", "connections": 4}', "'reconnects_per_second' is miss"),
    (
        decode_command,
        b'{"command": "shed", "connections": 4, "reconnects_per_second": 0}',
        "'reconnects_per_second' must be a number > 0",
    ),
    (EdgeStats.decode, b'{"pod": "e", "shedding": "no"}', "'shedding' must be true or false"),
    (EdgeStats.decode, b'{"pod": "e", "shed_pending": -4}', "'shed_pending' must be a whole"),
    (ControlReply.decode, b"{}", "control reply: 'ok' is missing"),
    (ControlReply.decode, b'{"ok": "yes"}', "control reply: 'ok' must be true or false"),
    (ControlReply.decode, b'{"ok": true, "connections": -2}', "'connections' must be a whole"),
    (ControlReply.decode, b'{"ok": false, "error": 3}', "'error' must be a string"),
]


@pytest.mark.parametrize(("decode", "data", "message"), BAD)
def test_bad_input_fails_naming_the_field(decode: Any, data: bytes, message: str) -> None:
    with pytest.raises(MessageError) as refused:
        decode(data)
    assert message in str(refused.value)


def test_a_message_error_is_invalid_input_and_a_value_error() -> None:
    with pytest.raises(InvalidInput):
        DrainGrant.decode(b"{}")
    with pytest.raises(ValueError, match="drain grant"):
        DrainGrant.decode(b"{}")


def test_a_huge_value_is_quoted_short_in_the_error() -> None:
    with pytest.raises(MessageError) as refused:
        EdgeStats.decode(json.dumps({"pod": "e", "connections": "x" * 10_000}).encode())
    assert len(str(refused.value)) < 200
