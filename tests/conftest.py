"""Shared fixtures: a real nats-server, real edge processes and a real control plane."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from switchboard.cli.launch import EdgeProcess, stop_all
from switchboard.cli.natsserver import NatsCluster, NatsServer
from switchboard.contract.tokens import mint_token

# A real etcd + kube-apiserver + kube-controller-manager (tests/controlplane), built
# from Go modules during collection when a collected test asks for `control_plane`.
from tests.controlplane.fixtures import build_control_plane_if_needed, control_plane

# The real-node tier's images (podman) and node (containerd, kubelet...), tests/realnode:
# built during collection when a collected test asks for `images` or `node`.
from tests.realnode.fixtures import build_images_if_needed, images, node, podman

# A real Jaeger v2 (tests/tracing), built from Go modules during collection when a
# collected test asks for `jaeger`.
from tests.tracing.fixtures import build_jaeger_if_needed, jaeger

__all__ = ["control_plane", "images", "jaeger", "node", "podman"]

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
        "bench",
        "tracing",
        "realnode",
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
    build_jaeger_if_needed(items)
    build_images_if_needed(items)


SECRET = "test-secret-that-is-long-enough-for-hs256"
ALLOWED_ORIGINS = '["http://allowed.example", "http://127.0.0.1:*", "http://localhost:*"]'


def token(sub: str = "alice", **kwargs: object) -> str:
    return mint_token(SECRET, sub, **kwargs)  # type: ignore[arg-type]


# An edge process of the tests (switchboard.cli.launch, as `switchboard dev` and bench use).
Edge = EdgeProcess


@dataclass
class EdgeFactory:
    """Edge processes on `nats`: one server, or every node of a cluster."""

    nats: NatsServer | NatsCluster
    tmp: str
    started: list[Edge] = field(default_factory=list)

    def start(self, name: str, **settings: str) -> Edge:
        edge = Edge.on(
            self.nats,
            name,
            jwt_secret=SECRET,
            log_path=os.path.join(self.tmp, f"{name}.log"),
            settings={"allowed_origins": ALLOWED_ORIGINS, "dev_tokens": "true", **settings},
        ).start(20)
        self.started.append(edge)
        return edge

    def stop_all(self) -> None:
        stop_all(self.started, 20)
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
