"""The `helm test` round trip, run inside a cluster (the preStop drain: localdrain.py)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys

from switchboard.client import Client, Closed, SwitchboardError
from switchboard.contract.channels import channel_subject
from switchboard.contract.tokens import mint_token
from switchboard_operator.channelstore import backend_publish


async def probe(
    url: str, token: str | None, secret: str | None, timeout_s: float, nats_url: str | None = None
) -> int:
    """Subscribe to a fresh channel, publish to it, and wait for the event to come back
    through the edge (and NATS): exit 0 only when it does. With `nats_url`, a second
    event is published there as a backend (its role's credentials) and must arrive too."""
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
                expected = [{"probe": marker}]
                if nats_url:
                    expected.append({"probe": marker, "from": "backend"})
                    prefix = os.environ.get("SB_SUBJECT_PREFIX", "sb")
                    subject = channel_subject(prefix, channel)
                    await backend_publish(nats_url, subject, json.dumps(expected[1]).encode())
                async for msg in client.events():
                    payload = msg.get("payload", {})
                    if msg.get("type") == "event" and payload.get("data") in expected:
                        expected.remove(payload["data"])
                    if not expected:
                        via = " and from a backend on NATS" if nats_url else ""
                        print(f"ok: round trip through {url} on {channel}{via}")
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
