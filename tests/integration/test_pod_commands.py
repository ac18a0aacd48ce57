"""The in-pod commands the chart uses: `switchboard drain` (preStop) and
`switchboard probe` (the `helm test` round trip), against real edges."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from switchboard.client import Client
from tests.conftest import SECRET, Edge, EdgeFactory, token


def command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard", *args], capture_output=True, text=True, timeout=60
    )


async def test_probe_round_trip_through_an_edge(edge1: Edge) -> None:
    result = await asyncio.to_thread(command, "probe", "--url", edge1.ws_url, "--secret", SECRET)
    assert result.returncode == 0, result.stderr
    assert "ok: round trip" in result.stdout


async def test_probe_fails_loudly_with_a_bad_secret(edge1: Edge) -> None:
    result = await asyncio.to_thread(
        command, "probe", "--url", edge1.ws_url, "--secret", "wrong-secret-wrong-secret-wrong"
    )
    assert result.returncode == 1
    assert "401" in result.stderr


async def test_prestop_drain_moves_clients_with_1001(edge_factory: EdgeFactory) -> None:
    edge = edge_factory.start("prestop-edge", reconnect_jitter_ms="0")
    try:
        client = await Client.connect(edge.ws_url, token=token("pat"))
        result = await asyncio.to_thread(command, "drain", "--port", str(edge.port))
        assert result.returncode == 0, result.stderr
        assert "'draining': True" in result.stdout
        frame = await client.next_message(5)
        assert frame["type"] == "reconnect"
        assert await client.wait_closed(5) == 1001
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, f"{edge.admin_url}/readyz", timeout=5)
        assert refused.value.code == 503
    finally:
        edge.stop()


async def test_drain_endpoint_wants_post(edge1: Edge) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, f"{edge1.http_url}/v1/drain", timeout=5)
    assert refused.value.code == 405
