"""Helpers for tests against real nats-server and edge processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from typing import Any

from nats.aio.client import Client as NatsClient

from edge.metrics import parse as parse_metrics
from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client
from tests.conftest import Edge


def edge_subjects(nats: NatsServer, pod: str) -> list[str]:
    """Subjects the edge `pod` has subscribed on nats-server, read from its monitoring port."""
    with urllib.request.urlopen(f"{nats.monitor_url}/connz?subs=1&limit=1024") as response:
        connz = json.load(response)
    subjects: list[str] = []
    for conn in connz["connections"]:
        if conn.get("name") == f"sb-edge:{pod}":
            subjects += conn.get("subscriptions_list") or []
    return sorted(s for s in subjects if not s.startswith("_INBOX"))


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


async def next_event(client: Client, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = await client.next_message(timeout)
        if msg["type"] == "event":
            return msg


async def settle(nc: NatsClient) -> None:
    """Make sure the server has processed what `nc` sent: nats-py's PING can overtake
    commands still in its pending buffer, so one flush is not enough."""
    await nc.flush()
    await nc.flush()


def channel_cli(nats: NatsServer, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "switchboard",
            "channel",
            "--nats-url",
            nats.url_for("operator"),  # the operator's job, done by hand
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout


def scrape_metrics(edge: Edge) -> dict[str, float]:
    """The edge's /metrics samples by `name{labels}` (from its admin port)."""
    with urllib.request.urlopen(f"{edge.admin_url}/metrics") as response:
        return parse_metrics(response.read().decode())
