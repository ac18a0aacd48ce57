"""Presence across edges: join/leave seen on both, users counted once, dead edges expire."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client, SwitchboardError
from tests.conftest import EdgeFactory, token

ROOM = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: room}
spec: {presence: true}
"""


@pytest.fixture
def presence_edges(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EdgeFactory]:
    """Own NATS and edges: the bucket's TTL (3 s here) is set by its first writer."""
    nats = NatsServer(auth=True).start()  # the role users, as in a cluster
    factory = EdgeFactory(nats, str(tmp_path_factory.mktemp("presence")))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "switchboard",
            "channel",
            "--nats-url",
            nats.url_for("operator"),
            "apply",
            "-f",
            "-",
        ],
        input=ROOM,
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )
    yield factory
    factory.stop_all()
    nats.stop()


async def presence_frame(client: Client, kind: str, user: str) -> dict[str, Any]:
    while True:
        msg = await client.next_message(timeout=5)
        if msg["type"] == kind and msg["payload"]["user"] == user:
            return msg


async def users(client: Client, channel: str = "room:1") -> list[str]:
    return list((await client.request("presence", {"channel": channel}))["users"])


async def test_presence_across_two_edges(presence_edges: EdgeFactory) -> None:
    one = presence_edges.start("p-1", presence_ttl_s="3")
    two = presence_edges.start("p-2", presence_ttl_s="3")
    await asyncio.sleep(0.5)  # both edges have read the Channel config
    bob = await Client.connect(two.ws_url, token=token("bob"))
    await bob.subscribe("room:1")
    alice = await Client.connect(one.ws_url, token=token("alice"))
    await alice.subscribe("room:1")
    joined = await presence_frame(bob, "join", "alice")
    assert joined == {"type": "join", "payload": {"channel": "room:1", "user": "alice"}}

    # a second connection of alice, on the other edge: no second join, counted once
    alice_again = await Client.connect(two.ws_url, token=token("alice"))
    await alice_again.subscribe("room:1")
    assert await users(bob) == ["alice", "bob"]
    assert await users(alice) == ["alice", "bob"]
    await alice.close()  # alice is still there through her other connection
    with pytest.raises(TimeoutError):
        await presence_frame(bob, "leave", "alice")
    await alice_again.close()
    assert (await presence_frame(bob, "leave", "alice"))["payload"]["channel"] == "room:1"
    assert await users(bob) == ["bob"]

    # an edge that dies without cleaning up: its users vanish within the TTL
    carol = await Client.connect(one.ws_url, token=token("carol"))
    await carol.subscribe("room:1")
    await presence_frame(bob, "join", "carol")
    assert one.process is not None
    one.process.kill()
    killed = time.monotonic()
    async with asyncio.timeout(10):
        while "carol" in await users(bob):
            await asyncio.sleep(0.25)
    assert time.monotonic() - killed <= 3 + 1.5  # TTL plus the KV's expiry sweep
    await bob.close()


async def test_presence_is_refused_where_it_is_off_or_forbidden(
    presence_edges: EdgeFactory,
) -> None:
    edge = presence_edges.start("p-3")
    await asyncio.sleep(0.5)
    client = await Client.connect(edge.ws_url, token=token("dan", channels=["lobby"]))
    with pytest.raises(SwitchboardError) as off:
        await users(client, "lobby")
    assert off.value.code == "not_enabled"
    with pytest.raises(SwitchboardError) as forbidden:
        await users(client, "room:1")
    assert forbidden.value.code == "forbidden"
    await client.close()
