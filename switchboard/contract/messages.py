"""The typed messages edges and the operator exchange over NATS (DESIGN §5, §7).

| message        | where (switchboard.contract.names)         | from → to                      |
|----------------|--------------------------------------------|--------------------------------|
| `EdgeStats`    | KV `sb_edges`, key = the edge's pod name   | edge → operator, periodically  |
| `DrainRequest` | request on `<prefix>.operator.drain`       | edge → operator, as it drains  |
| `DrainGrant`   | the reply to a `DrainRequest`              | operator → edge                |
| `DrainCommand` | `<prefix>.edge.<pod>.ctl`                  | operator → edge: drain now     |
| `RateCommand`  | `<prefix>.edge.<pod>.ctl`                  | operator → edge: re-pace       |
| `ShedCommand`  | `<prefix>.edge.<pod>.ctl`                  | operator → edge: move N away   |
| `ControlReply` | the reply on the control subject           | edge → operator                |

Each is JSON on the wire; `encode()` writes it and `decode(bytes)` reads it back,
refusing anything else with a `MessageError` that names the field. A field an edge
of an older version may leave out takes the default the operator always assumed.
Both sides read this one module, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from switchboard.contract.errors import MessageError

_REQUIRED: Any = object()  # a field without a default


def _object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise MessageError(f"{what}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise MessageError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _field(
    obj: Mapping[str, Any],
    what: str,
    name: str,
    default: Any,
    valid: Callable[[Any], bool],
    expected: str,
) -> Any:
    """`obj[name]` if `valid`, else `default` when absent (unless _REQUIRED); any
    other value is a MessageError naming `what` and `name`."""
    if name not in obj:
        if default is _REQUIRED:
            raise MessageError(f"{what}: '{name}' is missing")
        return default
    value = obj[name]
    if not valid(value):
        raise MessageError(f"{what}: '{name}' must be {expected}, got {value!r:.80}")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_seq(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _is_rate(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_flag(value: Any) -> bool:
    return isinstance(value, bool)


def _count(obj: Mapping[str, Any], what: str, name: str, default: Any = _REQUIRED) -> int:
    return int(_field(obj, what, name, default, _is_count, "a whole number >= 0"))


def _text(obj: Mapping[str, Any], what: str, name: str, default: Any = _REQUIRED) -> str:
    return str(_field(obj, what, name, default, _is_text, "a string"))


def _name(obj: Mapping[str, Any], what: str, name: str) -> str:
    value = _text(obj, what, name)
    if not value:
        raise MessageError(f"{what}: '{name}' must not be empty")
    return value


def _flag(obj: Mapping[str, Any], what: str, name: str, default: Any = _REQUIRED) -> bool:
    return bool(_field(obj, what, name, default, _is_flag, "true or false"))


def _rate(obj: Mapping[str, Any], what: str, name: str) -> float:
    return float(_field(obj, what, name, _REQUIRED, _is_rate, "a number > 0"))


def _seq(obj: Mapping[str, Any], what: str, name: str) -> int | None:
    value = _field(obj, what, name, None, _is_seq, "a whole number")
    return None if value is None else int(value)


def _dump(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj).encode()


# -- sb_edges ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelUsage:
    """One Channel resource as one edge sees it: its subscribers there, and how many
    client publishes that edge took so far (the operator sums them per Channel)."""

    subscribers: int = 0
    published: int = 0


@dataclass(frozen=True, slots=True)
class EdgeStats:
    """An edge's live numbers, written to `sb_edges` under its pod name every
    `stats_interval_s` (the entry expires with the edge: `stats_ttl_s`)."""

    pod: str
    connections: int = 0
    subscriptions: int = 0  # NATS subscriptions of the edge (one per channel in use)
    draining: bool = False
    accepting: bool = True
    ts: int = 0  # when it was taken, ms since the epoch
    channels: Mapping[str, ChannelUsage] = field(default_factory=dict)  # by Channel name
    shed_pending: int = 0  # connections a running shed (rebalancing) still has to move
    # a shed runs, or its moved clients may still be on their way back (its reconnect
    # jitter after the last move): their counts have not settled anywhere yet
    shedding: bool = False

    def usage(self, channel: str) -> ChannelUsage:
        """This edge's numbers for one Channel resource (zero when it has none)."""
        return self.channels.get(channel) or ChannelUsage()

    def encode(self) -> bytes:
        return _dump(
            {
                "pod": self.pod,
                "connections": self.connections,
                "subscriptions": self.subscriptions,
                "draining": self.draining,
                "accepting": self.accepting,
                "ts": self.ts,
                "shedding": self.shedding,
                "shed_pending": self.shed_pending,
                "channels": {
                    name: {"subscribers": u.subscribers, "published": u.published}
                    for name, u in self.channels.items()
                },
            }
        )

    @classmethod
    def decode(cls, data: bytes | str) -> EdgeStats:
        what = "edge stats"
        raw = _object(data, what)
        channels = _field(raw, what, "channels", {}, _is_object, "an object")
        usage: dict[str, ChannelUsage] = {}
        for name, entry in channels.items():
            where = f"{what}: channels.{name}"
            if not isinstance(entry, dict):
                raise MessageError(f"{where} must be an object, got {entry!r:.80}")
            usage[name] = ChannelUsage(
                subscribers=_count(entry, where, "subscribers", 0),
                published=_count(entry, where, "published", 0),
            )
        return cls(
            pod=_name(raw, what, "pod"),
            connections=_count(raw, what, "connections", 0),
            subscriptions=_count(raw, what, "subscriptions", 0),
            draining=_flag(raw, what, "draining", False),
            accepting=_flag(raw, what, "accepting", True),
            ts=_count(raw, what, "ts", 0),
            channels=usage,
            shed_pending=_count(raw, what, "shed_pending", 0),
            shedding=_flag(raw, what, "shedding", False),
        )


# -- <prefix>.operator.drain --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrainRequest:
    """An edge about to drain asks the operator for its pace (no answer: its default)."""

    pod: str
    connections: int = 0
    reason: str = ""

    def encode(self) -> bytes:
        return _dump({"pod": self.pod, "connections": self.connections, "reason": self.reason})

    @classmethod
    def decode(cls, data: bytes | str) -> DrainRequest:
        what = "drain request"
        raw = _object(data, what)
        return cls(
            pod=_name(raw, what, "pod"),
            connections=_count(raw, what, "connections", 0),
            reason=_text(raw, what, "reason", ""),
        )


@dataclass(frozen=True, slots=True)
class DrainGrant:
    """A drain pace: reconnects per second, and `seq`, which orders the operator's
    paces for one edge (a grant and a re-pace right after it may arrive in either
    order: the edge keeps the newest). Without `seq` it always applies."""

    reconnects_per_second: float
    seq: int | None = None

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reconnects_per_second": self.reconnects_per_second}
        if self.seq is not None:
            out["seq"] = self.seq
        return out

    def encode(self) -> bytes:
        return _dump(self._fields())

    @classmethod
    def decode(cls, data: bytes | str) -> DrainGrant:
        what = "drain grant"
        return cls(*_pace(_object(data, what), what))


def _pace(raw: Mapping[str, Any], what: str) -> tuple[float, int | None]:
    return _rate(raw, what, "reconnects_per_second"), _seq(raw, what, "seq")


# -- <prefix>.edge.<pod>.ctl --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrainCommand:
    """Drain now (as on SIGTERM): the edge answers with its connection count."""

    reason: str = "operator"

    def encode(self) -> bytes:
        return _dump({"command": "drain", "reason": self.reason})


@dataclass(frozen=True, slots=True)
class RateCommand(DrainGrant):
    """A new pace for a drain already running (same fields as a grant)."""

    def encode(self) -> bytes:
        return _dump({"command": "rate", **self._fields()})


@dataclass(frozen=True, slots=True)
class ShedCommand:
    """Move `connections` clients away at `reconnects_per_second`, as a drain moves
    them (`reconnect` with a resume token, then 1001), while still accepting new
    connections and staying Ready: how the operator rebalances a pool after a
    scale-up. A newer shed replaces a running one; `connections: 0` stops it. The
    edge answers with how many it will move. `seq` orders it like a pace."""

    connections: int
    reconnects_per_second: float
    seq: int | None = None
    reason: str = "rebalance"

    def encode(self) -> bytes:
        out: dict[str, Any] = {
            "command": "shed",
            "connections": self.connections,
            "reconnects_per_second": self.reconnects_per_second,
            "reason": self.reason,
        }
        if self.seq is not None:
            out["seq"] = self.seq
        return _dump(out)


ControlCommand = DrainCommand | RateCommand | ShedCommand


def decode_command(data: bytes | str) -> ControlCommand:
    """A message on an edge's control subject, as one of its commands."""
    what = "control command"
    raw = _object(data, what)
    kind = _text(raw, what, "command")
    if kind == "drain":
        return DrainCommand(_text(raw, what, "reason", "operator"))
    if kind == "rate":
        return RateCommand(*_pace(raw, what))
    if kind == "shed":
        rate, seq = _pace(raw, what)
        connections = _count(raw, what, "connections")
        return ShedCommand(connections, rate, seq, _text(raw, what, "reason", "rebalance"))
    raise MessageError(f"{what}: unknown command {kind!r:.80}")


@dataclass(frozen=True, slots=True)
class ControlReply:
    """An edge's answer to a command: done (with its connections for a drain, or how
    many it will move for a shed), or refused and why."""

    ok: bool
    connections: int | None = None
    error: str | None = None

    def encode(self) -> bytes:
        out: dict[str, Any] = {"ok": self.ok}
        if self.connections is not None:
            out["connections"] = self.connections
        if self.error is not None:
            out["error"] = self.error
        return _dump(out)

    @classmethod
    def decode(cls, data: bytes | str) -> ControlReply:
        what = "control reply"
        raw = _object(data, what)
        connections = _count(raw, what, "connections") if "connections" in raw else None
        error = _text(raw, what, "error") if "error" in raw else None
        return cls(_flag(raw, what, "ok"), connections, error)
