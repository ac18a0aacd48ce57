"""An edge starts serving only once it knows the Channels (`sb_channels`): a client
that arrives in the first moment after start gets its channel's history. And it
stops cleanly, with or without its NATS."""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from pathlib import Path

from switchboard.cli.launch import EdgeProcess
from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client
from tests.conftest import ALLOWED_ORIGINS, SECRET, Edge, token
from tests.integration.helpers import channel_cli, next_event

BOOT = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: boot}
spec:
  history: {size: 50, ttl: 10m}
"""


async def first_client(edge: Edge, timeout_s: float = 20) -> Client:
    """Connected as soon as the edge's port accepts: no waiting for anything else."""
    async with asyncio.timeout(timeout_s):
        while True:
            edge.check_alive(f"edge {edge.name}")
            try:
                return await Client.connect(edge.ws_url, token=token("early"))
            except OSError:
                await asyncio.sleep(0.002)


async def test_the_first_client_after_start_gets_offsets_and_recovery(
    nats_server: NatsServer, edge1: Edge, tmp_path: Path
) -> None:
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=BOOT)
    await asyncio.sleep(0.5)  # edge1 has read the config
    pub = await Client.connect(edge1.ws_url, token=token("alice"))
    start = await pub.subscribe("boot:room")
    acks = [await pub.publish("boot:room", i) for i in range(4)]
    await pub.close()

    edge = EdgeProcess.on(
        nats_server,
        "edge-boot",
        jwt_secret=SECRET,
        log_path=os.path.join(str(tmp_path), "edge-boot.log"),
        settings={"allowed_origins": ALLOWED_ORIGINS},
    )
    try:
        edge.spawn()
        early = await first_client(edge)
        since = {"offset": acks[1]["offset"], "epoch": start["epoch"]}
        ack = await early.subscribe("boot:room", since=since)
        assert (ack["offset"], ack["epoch"], ack["recovered"]) == (
            acks[-1]["offset"],
            start["epoch"],
            True,
        )
        got = [(await next_event(early))["payload"] for _ in range(2)]
        assert [(e["data"], e["offset"]) for e in got] == [
            (2, acks[2]["offset"]),
            (3, acks[3]["offset"]),
        ]
        await early.close()
    finally:
        await asyncio.to_thread(edge.stop)
        await asyncio.to_thread(channel_cli, nats_server, "delete", "boot")


class NatsWithoutJetStream(NatsServer):
    """Reachable, but nothing answers the JetStream API: `sb_channels` cannot be read."""

    def _args(self) -> list[str]:
        return [arg for arg in super()._args() if arg != "-js"]


def readyz(edge: Edge) -> int:
    try:
        with urllib.request.urlopen(f"{edge.admin_url}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_without_the_channels_the_edge_serves_but_is_not_ready_until_it_reads_them(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "edge-blind.log"
    nats_server = NatsWithoutJetStream().start()
    edge = EdgeProcess.on(
        nats_server,
        "edge-blind",
        jwt_secret=SECRET,
        log_path=str(log_path),
        settings={"channels_snapshot_timeout_s": "1"},
    )
    try:
        started = asyncio.get_running_loop().time()
        await asyncio.to_thread(edge.start, 20)
        assert asyncio.get_running_loop().time() - started >= 1.0  # it waited, bounded
        assert "sb_channels and sb_revoked not read within 1.0 s" in log_path.read_text()
        assert await asyncio.to_thread(readyz, edge) == 503
        client = await Client.connect(edge.ws_url, token=token("alice"))  # served anyway
        assert (await client.subscribe("any:room"))["offset"] is None  # the default policy
        await client.close()

        # the same address, now with JetStream: the edge reconnects and reads the bucket
        nats_server.stop()
        nats_server = NatsServer(port=nats_server.port).start()

        async def ready() -> bool:
            return await asyncio.to_thread(readyz, edge) == 200

        async with asyncio.timeout(20):
            while not await ready():
                edge.check_alive("edge edge-blind")
                await asyncio.sleep(0.2)
        assert "channel config read" in log_path.read_text()
    finally:
        await asyncio.to_thread(edge.stop)
        nats_server.stop()


async def test_sigterm_while_nats_is_gone_still_exits_zero(tmp_path: Path) -> None:
    """A pod stopped while its NATS is away (reconnecting) shuts down cleanly: nats-py
    refuses to drain a reconnecting connection, which used to end the edge with 1 and
    a traceback."""
    nats_server = NatsServer().start()
    edge = EdgeProcess.on(
        nats_server, "edge-orphan", jwt_secret=SECRET, log_path=str(tmp_path / "edge.log")
    )
    await asyncio.to_thread(edge.start, 20)
    nats_server.stop()
    await asyncio.sleep(1)  # the edge notices and starts reconnecting
    assert await asyncio.to_thread(edge.stop, 20) == 0, (tmp_path / "edge.log").read_text()
