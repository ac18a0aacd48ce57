"""The load generators' clients: Switchboard WebSocket connections (JWT, `welcome`,
`subscribe`) and NATS-over-WebSocket ones for the reference, opened many at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

from _config import SECRET

from switchboard.contract.wire import SUBPROTOCOL, bearer_subprotocol


def mint_token(subject: str) -> str:
    from switchboard.contract.tokens import mint_token as mint

    return mint(SECRET, subject, ttl_s=3600)


def mint_tokens(prefix: str, index: int, count: int) -> list[str]:
    """`count` tokens of distinct users `<prefix>-<index>-<i>` (index: the worker's)."""
    return [mint_token(f"{prefix}-{index}-{i}") for i in range(count)]


def sb_subprotocols(token: str) -> list[Any]:
    from websockets.typing import Subprotocol

    return [Subprotocol(SUBPROTOCOL), Subprotocol(bearer_subprotocol(token))]


def subscribe_frame(channel: str, request_id: str = "1") -> str:
    return json.dumps(
        {"type": "subscribe", "id": request_id, "payload": {"channel": channel}},
        separators=(",", ":"),
    )


async def sb_open(url: str, token: str, *, open_timeout: float = 60) -> Any:
    """A Switchboard connection, returned once `welcome` has arrived."""
    from websockets.asyncio.client import connect

    ws = await connect(
        url,
        subprotocols=sb_subprotocols(token),
        compression=None,
        ping_interval=None,
        open_timeout=open_timeout,
        max_size=1 << 24,
    )
    try:
        welcome = await ws.recv()
        if '"welcome"' not in welcome:
            raise RuntimeError(f"expected welcome, got {str(welcome)[:200]!r}")
    except BaseException:
        ws.transport.abort()
        raise
    return ws


async def sb_subscribe(ws: Any, channel: str) -> None:
    await ws.send(subscribe_frame(channel))
    while True:
        text = await ws.recv()
        if '"type":"ack"' in text:
            return
        if '"type":"error"' in text:
            raise RuntimeError(f"subscribe refused: {text[:200]!r}")


async def nats_ws_open(url: str, *, subject: str | None, open_timeout: float = 60) -> Any:
    """A NATS-over-WebSocket connection: CONNECT (+ SUB) + PING, returned at PONG."""
    from websockets.asyncio.client import connect

    ws = await connect(
        url, compression=None, ping_interval=None, open_timeout=open_timeout, max_size=1 << 24
    )
    out = b'CONNECT {"verbose":false,"protocol":1}\r\n'
    if subject is not None:
        out += b"SUB " + subject.encode() + b" 1\r\n"
    try:
        await ws.send(out + b"PING\r\n")
        seen = b""
        while b"PONG\r\n" not in seen:  # INFO first, then PONG once CONNECT/SUB are done
            data = await ws.recv()
            seen += data if isinstance(data, bytes) else data.encode()
            if b"-ERR" in seen:
                raise RuntimeError(f"nats refused: {seen[:200]!r}")
    except BaseException:
        ws.transport.abort()
        raise
    return ws


async def open_subscriber(mode: str, url: str, token: str, channel: str, subject: str) -> Any:
    """A subscribed client: Switchboard (`channel`) or NATS over WebSocket (`subject`)."""
    if mode != "switchboard":
        return await nats_ws_open(url, subject=subject)
    ws = await sb_open(url, token)
    try:
        await sb_subscribe(ws, channel)
    except BaseException:
        ws.transport.abort()
        raise
    return ws


async def open_clients(
    conn: Any,
    spec: dict[str, Any],
    tokens: list[str] | None,
    channel: str,
    subject: str,
    reader: Callable[[Any], Coroutine[Any, Any, None]] | None = None,
) -> tuple[list[Any], list[asyncio.Task[None]]]:
    """Open spec["clients"] subscribers, spec["concurrency"] handshakes at a time.

    A task `reader(ws)` is started for each one as it is ready. Then the worker's
    ("ready", info) goes to the parent (see `report_ready`): connected = the clients
    still open by then (without a reader, close_code is set on EOF). (sockets, readers)
    """
    sem = asyncio.Semaphore(spec["concurrency"])
    sockets: list[Any] = []
    readers: list[asyncio.Task[None]] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        async with sem:
            token = tokens[i] if tokens else ""
            try:
                ws = await open_subscriber(spec["mode"], spec["url"], token, channel, subject)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            sockets.append(ws)
            if reader is not None:
                readers.append(asyncio.create_task(reader(ws)))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(spec["clients"])))
    info = {
        "connected": sum(1 for ws in sockets if ws.close_code is None),
        "failed": len(errors),
        "errors": sorted(set(errors))[:5],
        "connect_s": time.monotonic() - t0,
    }
    conn.send(("ready", info))
    return sockets, readers


def report_ready(
    name: str, ready: list[dict[str, Any]], what: str
) -> tuple[int, int, list[str], float]:
    """Sum the workers' "ready" infos (`open_clients`), print one line.

    (connected, failed, errors, seconds)
    """
    connected = sum(r["connected"] for r in ready)
    failed = sum(r["failed"] for r in ready)
    errors = sorted({e for r in ready for e in r["errors"]})[:5]
    connect_s = max(r["connect_s"] for r in ready)
    print(
        f"  [{name}] {connected} {what} in {connect_s:.1f}s"
        + (f", {failed} failed: {errors}" if failed else ""),
        flush=True,
    )
    return connected, failed, errors, connect_s


async def connect_publisher(url: str, name: str) -> Any:
    """A nats-py connection (in the parent process), connected and flushed."""
    import nats

    nc = await nats.connect(url, name=name)
    await nc.flush()
    return nc


def abort_all(sockets: list[Any]) -> None:
    """Drop connections at once (no closing handshake): fast teardown of many clients."""
    for ws in sockets:
        with contextlib.suppress(Exception):
            ws.transport.abort()
