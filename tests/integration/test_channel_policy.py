"""A Channel applied with the CLI changes policy on every edge within a second."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client, SwitchboardError
from tests.conftest import Edge, token
from tests.integration.helpers import channel_cli

MANIFEST = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata:
  name: {name}
spec:
  publish: {{clients: {clients}}}
  subscribe: {{roles: [{roles}]}}
  maxMessageBytes: 64
"""


async def until_refused(client: Client, channel: str, code: str, deadline: float) -> float:
    """Seconds until a publish to `channel` is refused with `code`."""
    started = time.monotonic()
    while True:
        try:
            await client.publish(channel, "probe")
        except SwitchboardError as exc:
            if exc.code == code:
                return time.monotonic() - started
            raise
        assert time.monotonic() - started < deadline, f"still accepted after {deadline}s"
        await asyncio.sleep(0.02)


async def subscribe_outcome(client: Client, channel: str) -> str:
    """`ok` (and unsubscribed again) or the error code of the refusal."""
    try:
        await client.subscribe(channel)
    except SwitchboardError as exc:
        return exc.code
    await client.unsubscribe(channel)
    return "ok"


async def until_subscribe(client: Client, channel: str, outcome: str) -> None:
    async with asyncio.timeout(2):
        while await subscribe_outcome(client, channel) != outcome:
            await asyncio.sleep(0.02)


async def test_applied_channel_policy_reaches_both_edges_within_a_second(
    nats_server: NatsServer, edge1: Edge, edge2: Edge, tmp_path: Path
) -> None:
    clients = [await Client.connect(e.ws_url, token=token("alice")) for e in (edge1, edge2)]
    for client in clients:
        await client.publish("quiet:room", "allowed before")  # default policy
    manifest = tmp_path / "quiet.yaml"
    manifest.write_text(MANIFEST.format(name="quiet", clients="false", roles=""))
    out = await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", str(manifest))
    assert out == "channel/quiet configured\n"
    # the promise runs from the moment the CLI has stored the config (its own process start,
    # over a second on a loaded machine, is not the tier's latency): both edges within 1 s
    for client in clients:
        await until_refused(client, "quiet:room", "forbidden", deadline=1.0)
    for client in clients:
        await client.publish("loud:room", "other channels keep the default")

    # roles and size limits apply too; a change replaces the old config
    await asyncio.to_thread(
        channel_cli,
        nats_server,
        "apply",
        "-f",
        "-",
        stdin=MANIFEST.format(name="quiet", clients="true", roles="vip"),
    )
    for client in clients:
        await until_subscribe(client, "quiet:room", "forbidden")  # needs role vip now
        with pytest.raises(SwitchboardError) as big:
            await client.publish("quiet:room", "x" * 100)
        assert big.value.code == "too_large"
    vip = await Client.connect(edge2.ws_url, token=token("vera", roles=["vip"]))
    assert await vip.subscribe("quiet:lobby")

    listed = await asyncio.to_thread(channel_cli, nats_server, "list")
    # other tests of the session may have left their own Channels
    assert any(line.startswith("quiet\t") for line in listed.splitlines())
    assert await asyncio.to_thread(channel_cli, nats_server, "delete", "quiet") == (
        "channel/quiet deleted\n"
    )
    for client in clients:
        await until_subscribe(client, "quiet:room", "ok")  # back to the default policy
    for client in [*clients, vip]:
        await client.close()


def test_bad_manifest_is_refused_with_the_field_named(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(MANIFEST.format(name="bad", clients="maybe", roles=""))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "switchboard",
            "channel",
            "--nats-url",
            nats_server.url,
            "apply",
            "-f",
            str(manifest),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert "spec.publish.clients" in result.stderr
