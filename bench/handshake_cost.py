"""What one WebSocket handshake costs the edge's own code, in process (no sockets).

The edge's real request handler (`EdgeServer`: head parsing, admission with a
token never seen before, the 101 and `welcome`, the user's subject joined, the
closing handshake, the user's subject left) is driven through its real socket
layer (`edge.transport.ClientSocket`) by a transport that only keeps what is
written, on the in-memory backbone. The reference, measured in the same run, is
the least an asyncio protocol can do for the same bytes: find the key, answer a
fixed 101 and welcome, echo the close (`Minimal`). CPU µs per handshake
(`time.process_time`, best of `--rounds`), and the edge's ratio to it.

The kernel's share of a real handshake (accept, reads, writes, close: ~100 µs
on the 2-core machine of docs/benchmarks.md) and asyncio's selector loop are
not in either figure: `make bench` measures whole handshakes against Centrifugo.
This one isolates what the edge's Python adds, so a change to it can be weighed
in seconds.

    python bench/handshake_cost.py [--handshakes 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.app import make_verifier
from edge.flusher import Flusher
from edge.memory import MemoryBackbone
from edge.server import EdgeServer
from edge.settings import load_edge_settings
from edge.transport import ClientPort, ClientSocket
from switchboard.contract.tokens import mint_token

SECRET = "bench-secret-that-is-long-enough-for-hs256"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A client's close frame (code 1000), masked as every client frame must be.
_MASK = os.urandom(4)
_CODE_1000 = b"\x03\xe8"
CLOSE_FRAME = (
    bytes((0x88, 0x82)) + _MASK + bytes(b ^ m for b, m in zip(_CODE_1000, _MASK[:2], strict=True))
)


class Transport:
    """Keeps the byte count of what is written; closing calls `connection_lost`."""

    __slots__ = ("closing", "protocol", "written")

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


def upgrade_request(token: str) -> bytes:
    """What the Go load generator (gorilla/websocket) sends, with the token as bearer."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: Go-http-client/1.1\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: " + key + "\r\n"
        "Sec-WebSocket-Protocol: switchboard.v1, bearer." + token + "\r\n"
        "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n"
    ).encode()


class Minimal(asyncio.Protocol):
    """The reference: the bytes of a handshake answered with no checks at all."""

    WELCOME = b'{"type":"welcome","id":null,"payload":{"connection_id":"0","pod":"p"}}'

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.open = False

    def data_received(self, data: bytes) -> None:
        if self.open:
            self.transport.write(b"\x88\x02\x03\xe8")
            self.transport.write_eof()
            return
        start = data.find(b"Sec-WebSocket-Key: ") + 19
        accept = base64.b64encode(hashlib.sha1(data[start : start + 24] + GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: switchboard.v1"
            b"\r\n\r\n" + bytes((0x81, len(self.WELCOME))) + self.WELCOME
        )
        self.open = True


async def edge_handler() -> tuple[EdgeServer, ClientPort]:
    settings = load_edge_settings(
        jwt_secret=SECRET,
        pod_name="bench-edge",
        max_connections=1_000_000,
        new_connections_per_s=1_000_000,
        new_connections_burst=1_000_000,
        log_level="WARNING",
    )
    server = EdgeServer(settings, MemoryBackbone(), make_verifier(settings))
    server.flusher = Flusher(asyncio.get_running_loop(), 0)
    port = ClientPort(server, max_message_bytes=settings.max_message_bytes)
    return server, port


async def run(make: Any, requests: list[bytes]) -> float:
    """CPU seconds for one handshake per request, the loop turning every 100."""
    gc.collect()
    started = time.process_time()
    for i, request in enumerate(requests):
        protocol = make()
        transport = Transport(protocol)
        protocol.connection_made(transport)
        protocol.data_received(request)
        protocol.data_received(CLOSE_FRAME)
        protocol.connection_lost(None)
        if i % 100 == 99:
            await asyncio.sleep(0)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return time.process_time() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server, port = await edge_handler()
    n = args.handshakes
    edge_s, minimal_s = [], []
    for r in range(args.rounds):
        tokens = [mint_token(SECRET, f"u{r}-{i}", ttl_s=600) for i in range(n)]
        requests = [upgrade_request(token) for token in tokens]
        minimal_s.append(await run(Minimal, requests))
        edge_s.append(await run(lambda: ClientSocket(port), requests))
        assert not server.connections, "every connection must be gone after its close"
    edge_us, minimal_us = min(edge_s) / n * 1e6, min(minimal_s) / n * 1e6
    print(f"handshakes per round: {n}, rounds: {args.rounds} (best round)")
    print(f"edge     {edge_us:8.1f} µs CPU per handshake")
    print(f"minimal  {minimal_us:8.1f} µs CPU per handshake (reference)")
    print(f"ratio    {edge_us / minimal_us:8.2f}x the minimal protocol")


if __name__ == "__main__":
    asyncio.run(main())
