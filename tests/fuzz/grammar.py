"""One grammar of client frames and backend messages, for two engines.

The grammar draws from a `Source`: Hypothesis (`HypothesisSource`, shrinks what
it finds) or atheris' FuzzedDataProvider (`BytesSource`, coverage-guided). So
both fuzzers speak the same protocol: valid and invalid fields for every
client type, sizes, unicode, numbers at the edges, nesting around the limit,
and text-level damage (truncation, NaN, lone surrogates, bracket runs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from edge.protocol import CLIENT_TYPES, MAX_DEPTH, MAX_ID_LENGTH

T = TypeVar("T")


class Source(Protocol):
    def pick(self, options: Sequence[T]) -> T: ...

    def number(self, low: int, high: int) -> int: ...

    def text(self, max_len: int) -> str: ...

    def raw(self, max_len: int) -> bytes: ...


TYPES = sorted(CLIENT_TYPES)
BAD_TYPES = ["", "dance", "SUBSCRIBE", "event", "ack"]
CHANNELS = [
    "c",
    "chat:lobby",
    "ro:x",
    "p:room",
    "px:room",
    "small:x",
    "vip:x",
    "a" * 200,
    "a" * 201,
]
BAD_CHANNELS = ["", "a.b", "a:", ":a", "*", "chat:>", "#alice", "é", "a b", "a\nb"]
METHODS = ["m", "chat.history", "a" * 200, "a" * 201, "a b", ".m", "m.", "*"]
TOKENS = ["good", "other", "bad", ""]
EPOCHS = ["e1", "", "2026-11-22T04:29:01.123456+00:00"]
HEADER_TS = ["1700000000000", "", "abc", "9" * 30, "-5", "+5", " 12", "1_000", "١٢٣", "0"]
SCALARS: list[Any] = [None, True, False, 0, -1, 1.5, -0.0, 1e308, 2**63, 10**300, "", "x"]


def mostly(src: Source, good: Sequence[T], bad: Sequence[T]) -> T:
    """One of `good` three times in four, else one of `bad`."""
    return src.pick(src.pick([good, good, good, bad]))


def value(src: Source, depth: int = 0) -> Any:
    """Any JSON value; containers up to a few levels, plus chains around MAX_DEPTH."""
    kind = src.pick(
        ["scalar", "int", "text", "list", "object", "chain"] if depth < 4 else ["scalar"]
    )
    if kind == "scalar":
        return src.pick(SCALARS)
    if kind == "int":
        return src.number(-(2**70), 2**70)
    if kind == "text":
        return src.text(40)
    if kind == "list":
        return [value(src, depth + 1) for _ in range(src.number(0, 4))]
    if kind == "object":
        return {src.text(8): value(src, depth + 1) for _ in range(src.number(0, 4))}
    levels = src.pick([MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, src.number(0, 3 * MAX_DEPTH)])
    return chain(levels, src.pick([[], {}, 1, "leaf"]))


def chain(levels: int, leaf: Any) -> Any:
    """`levels` arrays and objects around `leaf`, built without recursion."""
    out = leaf
    for level in range(levels):
        out = [out] if level % 2 else {"k": out}
    return out


def client_frame(src: Source) -> str:
    """One client text frame: mostly well-shaped, often subtly wrong."""
    kind = mostly(src, TYPES, BAD_TYPES)
    payload: dict[str, Any] = {}
    if src.pick([True, True, True, False]):
        payload["channel"] = mostly(src, CHANNELS, [*BAD_CHANNELS, 5, None, ["c"]])
    if kind == "publish" or src.pick([False, False, False, True]):
        if src.pick([True, True, True, False]):
            payload["data"] = value(src)
        if src.pick([False, False, True]):
            payload["msg_id"] = src.pick(["m1", "", "a" * 300, 7, None, src.text(20)])
    if kind == "rpc" or src.pick([False, False, False, True]):
        payload["method"] = mostly(src, METHODS[:2], [*METHODS[2:], 5, None])
        if src.pick([False, True]):
            payload["timeout_ms"] = src.pick([1, 250, 0, -1, 30000, 30001, True, "5", 2.5])
        if src.pick([False, True]):
            payload["data"] = value(src)
    if kind == "subscribe" and src.pick([False, True]):
        payload["since"] = src.pick(
            [
                {"offset": src.number(-2, 2**64), "epoch": src.pick(EPOCHS)},
                {"offset": src.pick([True, "3", 1.5, None]), "epoch": "e1"},
                {"offset": 3, "epoch": src.pick([5, None, ["e"]])},
                5,
                "since",
                [],
            ]
        )
    if kind == "refresh" or src.pick([False, False, False, True]):
        payload["token"] = src.pick([*TOKENS, 5, None])
    frame: dict[str, Any] = {"type": kind}
    shape = mostly(src, ["full", "no id"], ["odd id", "odd payload", "odd type"])
    if shape != "no id":
        frame["id"] = src.pick(["1", "x" * MAX_ID_LENGTH, src.text(12)])
    frame["payload"] = payload
    if shape == "odd id":
        frame["id"] = src.pick([7, None, "x" * (MAX_ID_LENGTH + 1), ["1"], True])
    elif shape == "odd payload":
        frame["payload"] = src.pick([[], "p", 3, None, chain(MAX_DEPTH + 3, 1)])
    elif shape == "odd type":
        frame["type"] = src.pick([None, 5, ["publish"], {"t": 1}])
    text = json.dumps(frame, ensure_ascii=src.pick([True, False]))
    return damage(src, text)


def damage(src: Source, text: str) -> str:
    """Text-level faults a JSON encoder would never produce."""
    how = mostly(src, ["none"], ["cut", "token", "wrap", "junk", "lines"])
    if how == "none":
        return text
    if how == "cut":
        return text[: src.number(0, len(text))]
    if how == "token":
        at = text.rfind("}")
        bad = src.pick(["NaN", "-Infinity", "1e999", '"\\ud800"', '"\\udfff\\ud800"', "\ud800"])
        bad = src.pick([bad, bad, '"\ud800 raw"'])  # a raw one inside a string, too
        return text[:at] + ',"z":' + bad + text[at:] if at > 0 else bad
    if how == "wrap":
        levels = src.pick([MAX_DEPTH, MAX_DEPTH + 3, 990, 5000])
        return "[" * levels + text + "]" * levels
    if how == "junk":
        return src.text(64)
    return text + "\n" + text


def backend_body(src: Source) -> bytes:
    """What a backend (or anyone on NATS) may publish to a channel subject."""
    kind = src.pick(["json", "json", "deep", "not strict", "text", "bytes", "huge int"])
    if kind == "json":
        text = json.dumps(value(src), ensure_ascii=src.pick([True, False]))
        return text.encode("utf-8", "surrogatepass")  # as a buggy publisher might
    if kind == "deep":
        levels = src.pick([MAX_DEPTH, MAX_DEPTH + 1, 500, 975, 990, 1200, 20000])
        return ("[" * levels + "]" * levels).encode()
    if kind == "not strict":
        return src.pick(
            [b"NaN", b"[Infinity]", b"1e999", b'"\\ud800"', b'{"a":"\\udc00"}', b"[1,]"]
        )
    if kind == "text":
        return src.text(60).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return src.raw(60)
    return b"9" * src.pick([4300, 4301, 20000])


def backend_headers(src: Source) -> dict[str, str] | None:
    if src.pick([True, False]):
        return None
    headers = {"Sb-Ts": src.pick([*HEADER_TS, src.text(10)])}
    if src.pick([True, False]):
        headers["Sb-From"] = src.pick(["bot", "", src.text(20)])
    return headers


def presence_frame(src: Source) -> bytes:
    """What may arrive on a presence feed subject (edges publish ready-made frames)."""
    good = json.dumps({"type": "join", "payload": {"channel": "p:room", "user": "bob"}})
    return src.pick(
        [
            good.encode(),
            good.replace(",", ",\n").encode(),
            b"[1]",
            b"NaN",
            ("[" * 100 + "]" * 100).encode(),
            b"\xff",
            backend_body(src),
        ]
    )
