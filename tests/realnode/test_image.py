"""The image built from the unchanged Dockerfile, run as the chart runs it.

Real: ``podman build`` of the repository's Dockerfile (tests/realnode/images.py), the
container run read-only as uid 10001 with runc, the NATS image (the wheel's nats-server
FROM scratch, as uid 1000, read-only) as its backbone, WebSocket clients from the host.

Different from production, on purpose: the Dockerfile's base ``python:3.11.13-slim-bookworm``
cannot be pulled here (no Docker Hub), so it is a Debian bookworm rootfs from Debian
packages (Python 3.11.2 at /usr/bin/python3) imported under that name; containers use the
host's network instead of a pod's.

The tests share one NATS and one edge container and run in file order; the last stops the
edge with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from switchboard.cli.launch import free_port
from switchboard.client import Client
from switchboard.contract.tokens import mint_token
from tests.realnode.images import Container, Images, Podman

SECRET = "test-secret-that-is-long-enough-for-hs256"
# The chart's edge terminationGracePeriodSeconds is longer; an idle edge drains at once.
GRACE_S = 30


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait_http(url: str, timeout_s: float, container: Container) -> float:
    """Seconds until ``url`` answers 200; fails with the container's log otherwise."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout_s:
        try:
            status, body = _get(url)
            if status == 200:
                return time.monotonic() - started
            last = f"HTTP {status} {body[:200]}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    pytest.fail(f"{url} not 200 within {timeout_s}s ({last})\n{container.logs()[-3000:]}")


@dataclass
class Running:
    nats: Container
    nats_port: int
    edge: Container
    port: int
    admin_port: int
    started: float


@pytest.fixture(scope="module")
def running(podman: Podman, images: Images) -> Iterator[Running]:
    nats_port, nats_monitor = free_port(), free_port()
    nats = Container(
        podman,
        images.nats,
        *("-a", "127.0.0.1", "-p", str(nats_port), "-m", str(nats_monitor)),
        *("-js", "-sd", "/data"),
        options=("--read-only", "--user=1000:1000", "--tmpfs=/data:mode=1777"),
    )
    containers = [nats]
    try:
        _wait_http(f"http://127.0.0.1:{nats_monitor}/healthz?js-enabled-only=true", 30, nats)
        port, admin_port = free_port(), free_port()
        started = time.monotonic()
        edge = Container(
            podman,
            images.switchboard,
            options=(
                "--read-only",
                "--user=10001",
                f"--env=SB_EDGE_JWT_SECRET={SECRET}",
                f"--env=SB_EDGE_NATS_URL=nats://127.0.0.1:{nats_port}",
                f"--env=SB_EDGE_PORT={port}",
                f"--env=SB_EDGE_ADMIN_PORT={admin_port}",
                "--env=SB_EDGE_POD_NAME=edge-in-podman",
            ),
        )
        containers.append(edge)
        yield Running(nats, nats_port, edge, port, admin_port, started)
    finally:
        for container in reversed(containers):
            container.remove()


def test_edge_answers_healthz_and_readyz(running: Running) -> None:
    """The image's default command is the edge; it comes up on NATS from the NATS image."""
    admin = f"http://127.0.0.1:{running.admin_port}"
    _wait_http(f"{admin}/healthz", 60, running.edge)
    _wait_http(f"{admin}/readyz", 30, running.edge)
    print(f"edge container ready {time.monotonic() - running.started:.1f}s after podman run")


def test_runs_as_10001_on_a_read_only_root(running: Running) -> None:
    """USER 10001:10001 from the Dockerfile, and nothing in the image is writable."""
    who = running.edge.exec("python", "-c", "import os; print(os.getuid(), os.getgid())")
    assert who.stdout.split() == ["10001", "10001"], who
    write = running.edge.exec("python", "-c", "open('/opt/venv/x', 'w')")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr, write.stderr
    version = running.edge.exec("python", "-c", "import sys; print(sys.version_info[:2])")
    assert version.stdout.strip() == "(3, 11)", version


async def test_websocket_round_trip_from_the_host(running: Running) -> None:
    token = mint_token(SECRET, "alice")
    client = await Client.connect(f"ws://127.0.0.1:{running.port}/v1/ws", token=token)
    try:
        await client.subscribe("room:image")
        await client.publish("room:image", {"hello": "podman"})
        async with asyncio.timeout(10):
            async for msg in client.events():
                if msg.get("type") == "event":
                    assert msg["payload"]["data"] == {"hello": "podman"}
                    break
    finally:
        await client.close()


def test_probe_runs_in_the_image(podman: Podman, images: Images, running: Running) -> None:
    """The chart's helm test command, through the edge and from a backend on NATS."""
    proc = podman.run(
        "run",
        "--rm",
        "--pull=never",
        "--network=host",
        "--read-only",
        "--user=10001",
        images.switchboard,
        *("probe", "--url", f"ws://127.0.0.1:{running.port}/v1/ws", "--secret", SECRET),
        *("--nats-url", f"nats://127.0.0.1:{running.nats_port}", "--timeout", "20"),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: round trip" in proc.stdout


def test_operator_help_runs_in_the_image(podman: Podman, images: Images) -> None:
    proc = podman.run(
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--read-only",
        "--user=10001",
        images.switchboard,
        *("operator", "--help"),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("usage: switchboard operator")


async def test_sigterm_drains_and_exits_zero(running: Running) -> None:
    """SIGTERM (what the kubelet sends after preStop): the edge drains its client and exits 0."""
    token = mint_token(SECRET, "bob")
    client = await Client.connect(f"ws://127.0.0.1:{running.port}/v1/ws", token=token)
    try:
        started = time.monotonic()
        code = await asyncio.to_thread(running.edge.stop, GRACE_S)
        took = time.monotonic() - started
        close_code = await client.wait_closed(timeout=5)
    finally:
        await client.close()
    logs = running.edge.logs()
    assert code == 0, logs[-3000:]
    assert took < GRACE_S, f"stopped after {took:.1f}s: killed at the grace period?"
    drained = [json.loads(line) for line in logs.splitlines() if '"msg": "drained"' in line]
    assert drained and drained[0]["pod"] == "edge-in-podman", logs[-3000:]
    assert close_code == 1001, close_code  # going away: the drain's close
