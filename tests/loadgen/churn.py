"""Connection churn against one edge: many short WebSocket connections, each a scenario.

The `websockets` client costs about 1 ms of CPU per handshake, more than the edge
spends; on a 2-core CI machine that makes 100,000 connections too slow. This speaks
just enough RFC 6455 over raw asyncio streams (upgrade request with the
`Sec-WebSocket-Accept` check, masked client frames, unmasked server frames, text
frames split on `\\n` as the edge coalesces them, the closing handshake), so the
edge sees ordinary clients at a fraction of the cost.

Connection `i` runs scenario `SCENARIOS[i % len(SCENARIOS)]`:

  clean         welcome, then a 1000 closing handshake
  pubsub        subscribe to a channel, publish, wait for the ack and its own
                event, unsubscribe, then a 1000 closing handshake
  pubsub_reset  subscribe and publish as above, then a TCP reset (SO_LINGER 0)
                while still subscribed
  drop          welcome, then the TCP connection closed with no close frame
  bad_token     a JWT signed with another key: must be refused with 401
  bad_token_browser  the same with an allowed Origin, as a browser sends: must be
                refused in band, 101 then a 4001 close before any frame
  bad_origin    an Origin not on the allow-list: must be refused with 403
  upgrade_drop  the upgrade request sent, then the socket reset before any answer

Run as `python -m tests.loadgen.churn --port P --secret S --connections N ...`;
prints one JSON object: completed scenarios by name, failures by reason, seconds
and this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from switchboard.contract.tokens import mint_token
from switchboard.contract.wire import SUBPROTOCOL, WS_PATH, bearer_subprotocol

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA
SCENARIOS = (
    "clean",
    "pubsub",
    "drop",
    "clean",
    "pubsub_reset",
    "bad_token",
    "clean",
    "bad_token_browser",
    "upgrade_drop",
    "bad_origin",
)
ALLOWED_ORIGIN = "http://allowed.example"  # on the test edge's allow-list


class Failure(Exception):
    """A scenario saw something other than what the edge must answer."""


@dataclass
class Plan:
    host: str
    port: int
    tokens: list[str]
    bad_token: str
    channels: int
    timeout_s: float
    scenarios: tuple[str, ...] = SCENARIOS
    done: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)  # summed over completed ones


# --------------------------------------------------------------------------- framing


def mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 §5.2-5.3)."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + key + mask(payload, key)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (unmasked, unfragmented: the edge sends no fragments)."""
    b0, b1 = await reader.readexactly(2)
    if b1 & 0x80:
        raise Failure("server frame is masked")
    if not b0 & 0x80:
        raise Failure("fragmented server frame")
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


class Conn:
    """One upgraded connection: send JSON messages, read the edge's messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(client_frame(OP_TEXT, json.dumps(message).encode()))

    async def next_message(self) -> dict[str, Any]:
        while not self.pending:
            opcode, payload = await read_frame(self.reader)
            if opcode == OP_TEXT:
                self.pending = [json.loads(line) for line in payload.split(b"\n") if line]
            elif opcode == OP_PING:
                self.writer.write(client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise Failure(f"closed by the edge with {code}")
        return self.pending.pop(0)

    async def until(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            message = await self.next_message()
            if message.get("type") == "error":
                raise Failure(f"error {message['payload'].get('code')}")
            if match(message):
                return message

    async def close(self) -> None:
        """Closing handshake: our 1000, the edge's close frame, then its TCP close."""
        self.writer.write(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        while True:
            opcode, payload = await read_frame(self.reader)
            if opcode == OP_CLOSE:
                break
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        if code != 1000:
            raise Failure(f"close answered with {code}")
        if await self.reader.read(1) != b"":
            raise Failure("data after the close frame")
        self.writer.close()

    def reset(self) -> None:
        """Drop the connection with a TCP RST, as a vanished network path would look."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


# --------------------------------------------------------------------------- handshake


def upgrade_request(host: str, port: int, key: str, token: str, origin: str | None) -> bytes:
    lines = [
        f"GET {WS_PATH} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}, {bearer_subprotocol(token)}",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_upgrade(
    plan: Plan, token: str, origin: str | None = None
) -> tuple[int, dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]:
    """Send the upgrade; the status, headers (lower-case names) and the streams."""
    reader, writer = await asyncio.open_connection(plan.host, plan.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(upgrade_request(plan.host, plan.port, key, token, origin))
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == 101:
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise Failure("wrong Sec-WebSocket-Accept")
        if headers.get("sec-websocket-protocol") != SUBPROTOCOL:
            raise Failure("subprotocol not selected")
    return status, headers, reader, writer


async def connect(plan: Plan, token: str) -> Conn:
    status, _, reader, writer = await open_upgrade(plan, token)
    if status != 101:
        writer.transport.abort()
        raise Failure(f"upgrade answered {status}")
    conn = Conn(reader, writer)
    welcome = await conn.next_message()
    if welcome.get("type") != "welcome":
        raise Failure(f"first frame {welcome.get('type')}")
    return conn


async def refused_in_band(plan: Plan, token: str, origin: str, expect: int) -> None:
    status, _, reader, writer = await open_upgrade(plan, token, origin)
    if status != 101:
        writer.transport.abort()
        raise Failure(f"in-band refusal answered {status}")
    opcode, payload = await read_frame(reader)
    code = struct.unpack("!H", payload[:2])[0] if opcode == OP_CLOSE and len(payload) >= 2 else 0
    if opcode != OP_CLOSE or code != expect:
        writer.transport.abort()
        raise Failure(f"in-band refusal sent opcode {opcode} code {code}, expected {expect}")
    writer.write(client_frame(OP_CLOSE, payload[:2]))
    if await reader.read(1) != b"":
        raise Failure("data after the close frame")
    writer.close()


async def refused(plan: Plan, token: str, origin: str | None, expect: int) -> None:
    status, headers, reader, writer = await open_upgrade(plan, token, origin)
    try:
        if status != expect:
            raise Failure(f"refusal answered {status}, expected {expect}")
        await reader.readexactly(int(headers.get("content-length", "0")))
        if await reader.read(1) != b"":  # the edge closes after a refusal
            raise Failure("data after the refusal")
    finally:
        writer.close()


# --------------------------------------------------------------------------- scenarios


async def pubsub(plan: Plan, i: int) -> Conn:
    conn = await connect(plan, plan.tokens[i % len(plan.tokens)])
    channel = f"churn:{i % plan.channels}"
    conn.send({"type": "subscribe", "id": "s", "payload": {"channel": channel}})
    await conn.until(lambda m: m.get("type") == "ack" and m.get("id") == "s")
    conn.send({"type": "publish", "id": "p", "payload": {"channel": channel, "data": {"n": i}}})
    acked = seen = False
    while not (acked and seen):
        message = await conn.until(lambda m: m.get("type") in ("ack", "event"))
        acked = acked or message.get("id") == "p"
        seen = seen or message["payload"].get("data") == {"n": i}
    return conn


async def run_scenario(plan: Plan, i: int) -> None:
    name = plan.scenarios[i % len(plan.scenarios)]
    token = plan.tokens[i % len(plan.tokens)]
    if name == "clean":
        await (await connect(plan, token)).close()
    elif name == "pubsub":
        conn = await pubsub(plan, i)
        channel = f"churn:{i % plan.channels}"
        conn.send({"type": "unsubscribe", "id": "u", "payload": {"channel": channel}})
        await conn.until(lambda m: m.get("type") == "ack" and m.get("id") == "u")
        await conn.close()
    elif name == "pubsub_reset":
        (await pubsub(plan, i)).reset()
    elif name == "drop":
        conn = await connect(plan, token)
        conn.writer.transport.abort()
    elif name == "bad_token":
        await refused(plan, plan.bad_token, None, 401)
    elif name == "bad_token_browser":
        await refused_in_band(plan, plan.bad_token, ALLOWED_ORIGIN, 4001)
    elif name == "bad_origin":
        await refused(plan, token, "http://evil.example", 403)
    elif name == "upgrade_drop":
        reader, writer = await asyncio.open_connection(plan.host, plan.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(upgrade_request(plan.host, plan.port, key, token, None))
        await writer.drain()
        Conn(reader, writer).reset()
    plan.done[name] += 1


async def churn(plan: Plan, first: int, count: int, concurrency: int) -> None:
    """Run connections `first .. first+count-1`, at most `concurrency` at a time."""
    indices = iter(range(first, first + count))

    async def worker() -> None:
        for i in indices:
            name = plan.scenarios[i % len(plan.scenarios)]
            started = time.monotonic()
            try:
                async with asyncio.timeout(plan.timeout_s):
                    await run_scenario(plan, i)
                plan.seconds[name] = plan.seconds.get(name, 0.0) + time.monotonic() - started
            except Failure as exc:
                plan.failed[f"{name}: {exc}"] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                plan.failed[f"{name}: {type(exc).__name__}"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan(
        host=args.host,
        port=args.port,
        tokens=[
            mint_token(args.secret, f"churn-{u}", now=args.issued_at) for u in range(args.users)
        ],
        bad_token=mint_token(args.secret + "-not-the-key", "intruder", now=args.issued_at),
        channels=args.channels,
        timeout_s=args.timeout,
        scenarios=tuple(args.scenarios.split(",")) if args.scenarios else SCENARIOS,
    )
    started, cpu0 = time.monotonic(), cpu_s()
    await churn(plan, args.first, args.connections, args.concurrency)
    return {
        "done": dict(plan.done),
        "failed": dict(plan.failed),
        "mean_ms": {k: round(1000 * v / plan.done[k], 1) for k, v in plan.seconds.items()},
        "seconds": round(time.monotonic() - started, 3),
        "cpu_s": round(cpu_s() - cpu0, 3),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True, help="HS256 secret of the edge")
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first connection")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--users", type=int, default=500, help="distinct JWT subjects")
    parser.add_argument(
        "--issued-at",
        type=float,
        help="`iat` of the tokens (the same value gives the same tokens in every run, as "
        "reconnecting users present the same token again); default: now",
    )
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per connection")
    parser.add_argument("--scenarios", help="comma-separated cycle instead of the default mix")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    print(json.dumps(asyncio.run(main_async(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
