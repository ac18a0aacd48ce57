"""Small checks run inside a cluster: the `helm test` round trip and the preStop drain."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import urllib.error
import urllib.request

from switchboard.client import Client, Closed, SwitchboardError
from switchboard.tokens import mint_token


async def probe(url: str, token: str | None, secret: str | None, timeout_s: float) -> int:
    """Subscribe to a fresh channel, publish to it, and wait for the event to come back
    through the edge (and NATS): exit 0 only when it does."""
    if token is None:
        if not secret:
            print("a token or the JWT secret is required (--token / --secret)", file=sys.stderr)
            return 2
        token = mint_token(secret, "switchboard-probe", ttl_s=300)
    channel = f"sb-probe:{secrets.token_hex(4)}"
    marker = secrets.token_hex(8)
    try:
        async with asyncio.timeout(timeout_s):
            client = await Client.connect(url, token=token)
            try:
                await client.subscribe(channel)
                await client.publish(channel, {"probe": marker})
                async for msg in client.events():
                    payload = msg.get("payload", {})
                    if msg.get("type") == "event" and payload.get("data") == {"probe": marker}:
                        print(f"ok: round trip through {url} on {channel}")
                        return 0
            finally:
                await client.close()
    except TimeoutError:
        print(f"no event came back within {timeout_s} s", file=sys.stderr)
        return 1
    except (OSError, SwitchboardError, Closed) as exc:
        print(f"probe failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print("the connection closed before the event came back", file=sys.stderr)
    return 1


def start_local_drain(port: int) -> int:
    """POST /v1/drain on this pod's edge; it answers only loopback callers."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/drain", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            print(json.loads(response.read()))
            return 0
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # Nothing to drain if the edge is already gone; SIGTERM follows anyway.
        print(f"drain not started: {exc}", file=sys.stderr)
        return 0
