"""Shared fixtures: a real nats-server, real edge processes and a real control plane."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from switchboard.cli.natsserver import (
    NatsCluster,
    NatsServer,
    free_port,
    stop_process,
    wait_for_port,
)
from switchboard.contract.tokens import mint_token

# A real etcd + kube-apiserver + kube-controller-manager (tests/controlplane), built
# from Go modules during collection when a collected test asks for `control_plane`.
from tests.controlplane.fixtures import build_control_plane_if_needed, control_plane

__all__ = ["control_plane"]

# Each test is marked with its tier, its folder under tests/ (registered in
# pyproject.toml, so `--strict-markers` catches a folder nobody declared):
# `pytest -m "contract or edge"` runs the fast in-process tiers only.
TIERS = frozenset(
    [
        "contract",
        "client",
        "edge",
        "operator",
        "integration",
        "chart",
        "project",
        "fuzz",
        "browser",
        "controlplane",
        "e2e",
    ]
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = os.path.dirname(__file__)
    for item in items:
        tier = os.path.relpath(str(item.path), tests_dir).split(os.sep)[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests/{tier} is not a declared tier")
        item.add_marker(getattr(pytest.mark, tier))
    build_control_plane_if_needed(items)


SECRET = "test-secret-that-is-long-enough-for-hs256"
ALLOWED_ORIGINS = '["http://allowed.example", "http://127.0.0.1:*", "http://localhost:*"]'


def token(sub: str = "alice", **kwargs: object) -> str:
    return mint_token(SECRET, sub, **kwargs)  # type: ignore[arg-type]


@dataclass
class Edge:
    name: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    admin_port: int = 0

    @property
    def admin_url(self) -> str:
        """The admin port: health, metrics and the server API."""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Edge:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "switchboard", "edge"],
                env=self.env,
                stderr=log,
                stdout=log,
            )
        wait_for_port(self.port, 20)
        return self

    def stop(self) -> int | None:
        return None if self.process is None else stop_process(self.process, 20)


@dataclass
class EdgeFactory:
    """Edge processes on `nats`: one server, or every node of a cluster."""

    nats: NatsServer | NatsCluster
    tmp: str
    started: list[Edge] = field(default_factory=list)

    def start(self, name: str, **settings: str) -> Edge:
        port, admin_port = free_port(), free_port()
        env = os.environ | {
            "SB_EDGE_HOST": "127.0.0.1",
            "SB_EDGE_PORT": str(port),
            "SB_EDGE_ADMIN_HOST": "127.0.0.1",
            "SB_EDGE_ADMIN_PORT": str(admin_port),
            "SB_EDGE_POD_NAME": name,
            "SB_EDGE_NATS_URL": self.nats.address,
            "SB_EDGE_JWT_SECRET": SECRET,
            "SB_EDGE_ALLOWED_ORIGINS": ALLOWED_ORIGINS,
            "SB_EDGE_DEV_TOKENS": "true",
        }
        if self.nats.passwords is not None:  # the edge role's own login (DESIGN §6)
            user, password = self.nats.credentials("edge")
            env |= {"SB_EDGE_NATS_USER": user, "SB_EDGE_NATS_PASSWORD": password}
        env |= {f"SB_EDGE_{k.upper()}": v for k, v in settings.items()}
        log_path = os.path.join(self.tmp, f"{name}.log")
        edge = Edge(name, port, env, log_path=log_path, admin_port=admin_port).start()
        self.started.append(edge)
        return edge

    def stop_all(self) -> None:
        for edge in self.started:
            edge.stop()
        self.started.clear()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    # with the role users and permissions the chart runs: edges log in as edges, the
    # channel CLI as the operator, and `nats_server.url` is a backend's URL
    with NatsServer(auth=True) as server:
        yield server


@pytest.fixture(scope="session")
def edge_factory(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeFactory]:
    factory = EdgeFactory(nats_server, str(tmp_path_factory.mktemp("edges")))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def edge1(edge_factory: EdgeFactory) -> Edge:
    return edge_factory.start("edge-1")


@pytest.fixture(scope="session")
def edge2(edge_factory: EdgeFactory) -> Edge:
    return edge_factory.start("edge-2")
