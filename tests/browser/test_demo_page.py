"""The demo page (edge/static/demo.html, built on the SDK) in real headless Chromium."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from switchboard.cli.natsserver import NatsServer
from tests.conftest import Edge, EdgeFactory
from tests.integration.helpers import channel_cli

DEMO_HISTORY = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: demohist}
spec:
  history: {size: 100, ttl: 10m}
"""


async def join(page: Any, edge: Edge, name: str, channel: str, urls: str = "") -> None:
    await page.goto(f"{edge.http_url}/")
    await page.fill("#name", name)
    await page.fill("#channel", channel)
    if urls:
        await page.fill("#urls", urls)
    await page.click("#connect")
    await page.wait_for_selector("#text:not([disabled])", timeout=10_000)


async def say(page: Any, text: str) -> None:
    await page.fill("#text", text)
    await page.click("#send")


async def log_shows(page: Any, text: str, timeout_ms: int = 10_000) -> None:
    await page.wait_for_function(
        f"document.getElementById('log').innerText.includes({text!r})", timeout=timeout_ms
    )


async def test_two_tabs_on_two_edges_chat(browser: Any, edge1: Edge, edge2: Edge) -> None:
    context = await browser.new_context()
    alice = await context.new_page()
    bob = await context.new_page()
    await join(alice, edge1, "alice", "chat:browser")
    await join(bob, edge2, "bob", "chat:browser")
    assert "edge-1" in await alice.text_content("#status")
    assert "edge-2" in await bob.text_content("#status")
    await say(alice, "hello from edge one")
    await log_shows(bob, "hello from edge one")
    assert "alice" in await bob.inner_text("#log")
    await say(bob, "hi alice, bob on edge two")
    await log_shows(alice, "bob on edge two")
    await alice.screenshot(path=os.environ.get("SB_SCREENSHOT", "/tmp/switchboard-demo.png"))
    await context.close()


async def test_demo_shows_reconnects_and_recovered_events(
    browser: Any, nats_server: NatsServer, edge_factory: EdgeFactory, edge2: Edge
) -> None:
    """A drain, then the browser offline: the page says so and catches up."""
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=DEMO_HISTORY)
    home = edge_factory.start("demo-home", reconnect_jitter_ms="300")
    alice_ctx = await browser.new_context()
    bob_ctx = await browser.new_context()
    alice = await alice_ctx.new_page()
    bob = await bob_ctx.new_page()
    await join(alice, home, "alice", "demohist:room", urls=f"{home.ws_url},{edge2.ws_url}")
    await join(bob, edge2, "bob", "demohist:room")

    assert home.process is not None
    home.process.terminate()  # its edge drains: the page moves with the resume token
    await log_shows(alice, "with the resume token")
    assert "1001" in await alice.text_content("#lastclose")
    await say(bob, "after the drain")
    await log_shows(alice, "after the drain")
    assert "edge-2" in await alice.text_content("#status")
    await alice_ctx.set_offline(True)  # the browser's `offline` event: the SDK lets go
    await alice.wait_for_function("document.getElementById('status').className === 'disconnected'")
    for n in range(3):
        await say(bob, f"while you were away {n}")
    await log_shows(bob, "while you were away 2")
    await alice_ctx.set_offline(False)  # `online`: it reconnects at once and recovers
    await log_shows(alice, "while you were away 2")
    assert await alice.text_content("#recovered") == "3"
    assert "recovered" in await alice.inner_text("#log")
    assert "resubscribed to demohist:room: missed events follow" in await alice.inner_text("#log")

    await alice_ctx.close()
    await bob_ctx.close()
