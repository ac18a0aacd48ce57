"""Real headless Chromium for the browser tests (Debian `chromium`; CI installs it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

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


def _playwright() -> Any:
    """playwright's async API; skipped locally without Chromium, never in CI."""
    api = pytest.importorskip("playwright.async_api", reason="playwright not installed")
    if not shutil.which(CHROMIUM) and not os.environ.get("CI"):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    return api


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with _playwright().async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield instance
        await instance.close()
