"""The one launcher of local Switchboard processes: `switchboard dev`, the test suite
(tests/conftest.py, the operator harness) and the benchmarks start edges, the
operator and helper servers through it, so that an edge is configured, waited for
and stopped the same way everywhere.

A process is configured only through its environment (`SB_EDGE_*` as in a pod),
its output goes to a log file (or to ours), and stopping is SIGTERM — an edge drains
on it — then SIGKILL after a timeout. The nats-server itself is `natsserver.NatsServer`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol, Self

from switchboard.contract.permissions import Role
from switchboard.contract.wire import WS_PATH

EDGE_ENV_PREFIX = "SB_EDGE_"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10) -> int:
    """SIGTERM, wait, then SIGKILL: the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def switchboard_command(*args: str) -> list[str]:
    """`switchboard <args>` as this Python runs it (no console script needed)."""
    return [sys.executable, "-m", "switchboard", *args]


class LocalProcess:
    """A child process we start and must stop; its output goes to `log_path`
    (appended), or to our own stdout/stderr when there is none. `stop()` waits
    `stop_timeout_s` after SIGTERM before it kills."""

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str] | None = None,
        log_path: str | None = None,
        *,
        stop_timeout_s: float = 10,
    ) -> None:
        self.args = args
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.stop_timeout_s = stop_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> Self:
        """Start it (without waiting for anything)."""
        if self.log_path is None:
            self.process = subprocess.Popen(self.args, env=self.env)
        else:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=log)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self, what: str) -> None:
        """Raise, with the end of its log, if it has exited."""
        if self.process is not None and self.process.poll() is not None:
            tail = ""
            if self.log_path is not None:
                with contextlib.suppress(OSError):
                    tail = ":\n" + Path(self.log_path).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{what} exited with {self.process.returncode}{tail}")

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s` (default `stop_timeout_s`): the exit
        code (None: never started)."""
        if self.process is None:
            return None
        return stop_process(self.process, self.stop_timeout_s if timeout_s is None else timeout_s)


def stop_all(processes: Iterable[LocalProcess], timeout_s: float) -> None:
    """SIGTERM to all at once, so they drain side by side, then SIGKILL whatever is left
    `timeout_s` later."""
    running = [p.process for p in processes if p.process is not None]
    for process in running:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout_s
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Nats(Protocol):
    """What an edge needs to know of the NATS it joins (a `NatsServer` or `NatsCluster`)."""

    @property
    def address(self) -> str: ...

    @property
    def passwords(self) -> Mapping[Role, str] | None: ...

    def credentials(self, role: Role) -> tuple[str, str]: ...


def edge_env(
    nats: Nats,
    *,
    name: str,
    port: int,
    jwt_secret: str,
    host: str = "127.0.0.1",
    settings: Mapping[str, object] | None = None,
    base: Mapping[str, str] | None = None,
    admin_port: int | None = None,
) -> dict[str, str]:
    """An edge's environment: `base` (ours by default), where it listens (its admin port
    on a free port unless given), its pod name, the NATS it joins with the edge role's
    login when that NATS has users (DESIGN §6), the HS256 secret, then `settings` as
    `SB_EDGE_<KEY>`."""
    env = dict(os.environ if base is None else base) | {
        f"{EDGE_ENV_PREFIX}HOST": host,
        f"{EDGE_ENV_PREFIX}PORT": str(port),
        f"{EDGE_ENV_PREFIX}ADMIN_HOST": host,
        f"{EDGE_ENV_PREFIX}ADMIN_PORT": str(free_port() if admin_port is None else admin_port),
        f"{EDGE_ENV_PREFIX}POD_NAME": name,
        f"{EDGE_ENV_PREFIX}NATS_URL": nats.address,
        f"{EDGE_ENV_PREFIX}JWT_SECRET": jwt_secret,
    }
    if nats.passwords is not None:
        user, password = nats.credentials("edge")
        env |= {f"{EDGE_ENV_PREFIX}NATS_USER": user, f"{EDGE_ENV_PREFIX}NATS_PASSWORD": password}
    return env | {f"{EDGE_ENV_PREFIX}{k.upper()}": str(v) for k, v in (settings or {}).items()}


class EdgeProcess(LocalProcess):
    """One edge, `python -m switchboard edge`, configured by its environment alone.
    SIGTERM makes it drain: `stop()` gives it 20 s before it kills."""

    def __init__(
        self,
        name: str,
        port: int,
        env: Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        log_path: str | None = None,
    ) -> None:
        super().__init__(switchboard_command("edge"), env, log_path, stop_timeout_s=20)
        self.name = name
        self.port = port
        self.host = host
        self.admin_port = int(env.get(f"{EDGE_ENV_PREFIX}ADMIN_PORT", "9090"))

    @classmethod
    def on(
        cls,
        nats: Nats,
        name: str,
        *,
        jwt_secret: str,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: str | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> EdgeProcess:
        """An edge of `nats` (on a free port unless given), not started yet."""
        port = port or free_port()
        env = edge_env(
            nats, name=name, port=port, jwt_secret=jwt_secret, host=host, settings=settings
        )
        return cls(name, port, env, host=host, log_path=log_path)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{WS_PATH}"

    @property
    def http_url(self) -> str:
        """The client port over HTTP: `/v1/*` only (tickets, the drain, dev pages)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The admin port: `/healthz`, `/readyz`, `/metrics` and the server API."""
        return f"http://127.0.0.1:{self.admin_port}"

    def wait_ready(self, timeout_s: float = 20, *, readyz: bool = False) -> None:
        """Until both its ports listen (the admin port opens just after the client
        port); with `readyz`, until the admin port's `/readyz` says ready (NATS joined)."""
        deadline = time.monotonic() + timeout_s
        wait_for_port(self.port, timeout_s, self.host)
        if self.admin_port:  # 0: the edge picked one we cannot know
            wait_for_port(self.admin_port, max(0.1, deadline - time.monotonic()), self.host)
        while readyz:
            self.check_alive(f"edge {self.name}")
            with contextlib.suppress(OSError):
                url = f"{self.admin_url}/readyz"
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.read().decode().startswith("ready"):
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"edge {self.name} not ready in {timeout_s} s")
            time.sleep(0.1)

    def start(self, timeout_s: float = 20, *, readyz: bool = False) -> Self:
        """Spawn, then wait as `wait_ready` does."""
        self.spawn().wait_ready(timeout_s, readyz=readyz)
        return self
