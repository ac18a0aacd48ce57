"""The demo page in real headless Chromium: two tabs on two edges exchange a message."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest

from tests.conftest import Edge

CHROMIUM = os.environ.get("SB_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright not installed")

if not shutil.which(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip(
        f"Chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True
    )


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield instance
        await instance.close()


async def test_two_tabs_on_two_edges_chat(browser: object, edge1: Edge, edge2: Edge) -> None:
    context = await browser.new_context()  # type: ignore[attr-defined]
    alice = await context.new_page()
    bob = await context.new_page()
    for page, edge, name in ((alice, edge1, "alice"), (bob, edge2, "bob")):
        await page.goto(f"{edge.http_url}/")
        await page.fill("#name", name)
        await page.fill("#channel", "chat:browser")
        await page.click("#connect")
        await page.wait_for_selector("#text:not([disabled])", timeout=10_000)
    assert "edge-1" in await alice.text_content("#status")
    assert "edge-2" in await bob.text_content("#status")
    await alice.fill("#text", "hello from edge one")
    await alice.click("#send")
    await bob.wait_for_function(
        "document.getElementById('log').innerText.includes('hello from edge one')",
        timeout=10_000,
    )
    log = await bob.inner_text("#log")
    assert "alice" in log
    await bob.fill("#text", "hi alice, bob on edge two")
    await bob.click("#send")
    await alice.wait_for_function(
        "document.getElementById('log').innerText.includes('bob on edge two')", timeout=10_000
    )
    await alice.screenshot(path=os.environ.get("SB_SCREENSHOT", "/tmp/switchboard-demo.png"))
    await context.close()
