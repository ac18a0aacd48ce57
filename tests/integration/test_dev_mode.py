"""`switchboard dev` (the README's first command) runs NATS with the same role users
and permissions as a cluster: anonymous clients are refused, the printed backend
URL reaches clients on both edges, `switchboard channel` finds the operator's
login by itself, and the probe's backend leg works with the backend role."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import nats
import pytest

from switchboard.cli.natsserver import free_port, wait_for_port
from switchboard.client import Client
from tests.integration.helpers import next_event

SECRET = "dev-mode-secret-long-enough-for-hs256-x"


@dataclass
class Dev:
    process: subprocess.Popen[str]
    ports: list[int]
    banner: str

    def field(self, name: str) -> str:
        found = re.search(rf"^\s*{name}\s+(\S+)", self.banner, re.MULTILINE)
        assert found, f"{name} not in the banner:\n{self.banner}"
        return found.group(1)


def start_dev() -> Dev:
    ports = [free_port(), free_port()]
    process = subprocess.Popen(
        [sys.executable, "-m", "switchboard", "dev", "--ports", ",".join(map(str, ports))],
        env=os.environ | {"SB_EDGE_JWT_SECRET": SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its edges and NATS with it: a last resort kills them all
        # Started as a script's background job would be (SIGINT ignored): Ctrl-C, the
        # teardown's SIGINT, must still stop it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while "Try it from a terminal" not in "".join(lines):
        assert time.monotonic() < deadline, "no banner"
        line = process.stdout.readline()
        assert line, "switchboard dev exited"
        lines.append(line)
    # The edges log to the same pipe: keep reading it, or they block once it is full.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    for port in ports:
        wait_for_port(port, 20)
    return Dev(process, ports, "".join(lines))


@pytest.fixture(scope="module")
def dev() -> Iterator[Dev]:
    running = start_dev()
    yield running
    running.process.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        assert running.process.wait(30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.process.pid, signal.SIGKILL)  # whatever it left behind


async def test_dev_nats_refuses_anonymous_and_serves_the_printed_backend(dev: Dev) -> None:
    address, backend_url = dev.field("nats"), dev.field("backend")
    assert "@" not in address and "sb-backend:" in backend_url
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(address, allow_reconnect=False)

    token = dev.field("dev token")
    listener = await Client.connect(f"ws://127.0.0.1:{dev.ports[1]}/v1/ws", token=token)
    await listener.subscribe("chat:lobby")
    backend = await nats.connect(backend_url)
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    await backend.publish("sb.ch.chat.lobby", b'{"text": "from a backend"}')
    assert (await next_event(listener))["payload"]["data"] == {"text": "from a backend"}
    await backend.close()
    # the backend role cannot drain an edge
    rogue = await nats.connect(backend_url, error_cb=on_error)
    await rogue.publish("sb.edge.edge-1.ctl", b'{"command": "drain"}')
    await rogue.flush()
    await asyncio.sleep(0.2)
    await rogue.close()
    assert any("permissions violation" in str(e).lower() for e in errors)
    publisher = await Client.connect(f"ws://127.0.0.1:{dev.ports[0]}/v1/ws", token=token)
    await publisher.publish("chat:lobby", "still serving")  # edge-1 was not drained
    assert (await next_event(listener))["payload"]["data"] == "still serving"
    await publisher.close()
    await listener.close()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_channel_cli_and_probe_use_their_roles(dev: Dev) -> None:
    manifest = "apiVersion: switchboard.dev/v1alpha1\nkind: Channel\nmetadata: {name: devroom}\n"
    applied = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "switchboard", "channel", "apply", "-f", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr  # found the operator's login itself
    listed = await asyncio.to_thread(run, "channel", "list")
    assert "devroom" in listed.stdout
    url = f"ws://127.0.0.1:{dev.ports[0]}/v1/ws"
    probe = await asyncio.to_thread(
        run, "probe", "--url", url, "--secret", SECRET, "--nats-url", dev.field("backend")
    )
    assert probe.returncode == 0, probe.stderr
    assert "from a backend on NATS" in probe.stdout
    # a wrong password is refused and said so, the password not printed
    wrong = re.sub(r":[^:@]+@", ":wrong@", dev.field("backend"))
    failed = await asyncio.to_thread(
        run, "probe", "--url", url, "--secret", SECRET, "--nats-url", wrong
    )
    assert failed.returncode == 1
    assert "wrong" not in failed.stderr
