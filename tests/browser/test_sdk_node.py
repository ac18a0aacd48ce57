"""The browser SDK's own tests (node's test runner) against real edges and nats-server.

Pure logic (backoff, the close-code table, frame splitting, dedupe) and, on the
wire, requests and typed errors, in-band refresh, 4001, tickets, a drain with the
resume token, a frozen edge (SIGSTOP) noticed by the silence probe, a refusal's
`retry after <ms>` waited, and a stop code.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import nats
import pytest

from switchboard.cli.natsserver import NatsServer
from tests.browser.sdk import JS_DIR, SHIPPED_BUNDLE, build_sdk, node
from tests.conftest import SECRET, Edge, EdgeFactory
from tests.integration.helpers import channel_cli

HISTORY = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: jshist}
spec:
  history: {size: 1000, ttl: 10m}
"""


def test_shipped_bundle_is_built_from_the_current_source() -> None:
    """edge/static/switchboard.js is committed (pip installs need no Node); it must match."""
    built = build_sdk().read_bytes()
    assert SHIPPED_BUNDLE.read_bytes() == built, (
        "edge/static/switchboard.js is stale: run `make js` and commit it"
    )


@pytest.mark.timeout(240)
async def test_sdk_node_suite(
    nats_server: NatsServer, edge_factory: EdgeFactory, edge1: Edge, edge2: Edge
) -> None:
    build_sdk()
    await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=HISTORY)
    draining = edge_factory.start("js-drain")
    refusing = edge_factory.start("js-drain-refusing")  # drained: then refuses, or is gone
    frozen = edge_factory.start("js-frozen", ping_interval_s="1")
    drained = edge_factory.start("js-drained", in_band_refusals="always")
    operator = await nats.connect(nats_server.url_for("operator"))
    reply = await operator.request("sb.edge.js-drained.ctl", b'{"command": "drain"}', timeout=5)
    await operator.close()
    assert json.loads(reply.data) == {"ok": True, "connections": 0}  # refuses from now on
    assert draining.process is not None
    assert refusing.process is not None
    assert frozen.process is not None
    env = os.environ | {
        "SB_URLS": f"{edge1.ws_url},{edge2.ws_url}",
        "SB_DRAIN_URL": draining.ws_url,
        "SB_DRAIN_PID": str(draining.process.pid),
        "SB_REFUSING_URL": refusing.ws_url,
        "SB_REFUSING_PID": str(refusing.process.pid),
        "SB_STOP_URL": frozen.ws_url,
        "SB_STOP_PID": str(frozen.process.pid),
        "SB_DRAINED_URL": drained.ws_url,
        "SB_SECRET": SECRET,
        "SB_HISTORY": "jshist",
    }
    await asyncio.sleep(0.5)  # every edge has read the Channel
    result = await asyncio.to_thread(
        subprocess.run,
        [node(), "--experimental-websocket", "--test", "--test-reporter=spec", "test/"],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "skipped 0" in output, output  # every wire test ran
    assert "fail 0" in output, output
