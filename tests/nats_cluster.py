"""A real 3-node NATS cluster (JetStream, routes on loopback, a store per node, the
role users and permissions the chart runs) and edges connected to all of it, for the
replication and node-loss tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from switchboard.natsserver import NatsCluster, free_port
from switchboard.permissions import Role
from tests.conftest import ALLOWED_ORIGINS, SECRET, Edge


@dataclass
class ClusterEdges:
    """Edge processes whose SB_EDGE_NATS_URL lists every node of `cluster`."""

    cluster: NatsCluster
    tmp: str
    started: list[Edge] = field(default_factory=list)

    def start(self, name: str, **settings: str) -> Edge:
        port = free_port()
        env = os.environ | {
            "SB_EDGE_HOST": "127.0.0.1",
            "SB_EDGE_PORT": str(port),
            "SB_EDGE_POD_NAME": name,
            "SB_EDGE_NATS_URL": self.cluster.address,
            "SB_EDGE_JWT_SECRET": SECRET,
            "SB_EDGE_ALLOWED_ORIGINS": ALLOWED_ORIGINS,
        }
        user, password = self.cluster.credentials("edge")  # edges log in as edges
        env |= {"SB_EDGE_NATS_USER": user, "SB_EDGE_NATS_PASSWORD": password}
        env |= {f"SB_EDGE_{k.upper()}": v for k, v in settings.items()}
        edge = Edge(name, port, env, log_path=os.path.join(self.tmp, f"{name}.log")).start()
        self.started.append(edge)
        return edge

    def stop_all(self) -> None:
        for edge in self.started:
            edge.stop()
        self.started.clear()


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    base_dir = str(tmp_path_factory.mktemp("nats-cluster"))
    with NatsCluster(3, base_dir=base_dir, auth=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster_edges(
    nats_cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterEdges]:
    edges = ClusterEdges(nats_cluster, str(tmp_path_factory.mktemp("cluster-edges")))
    yield edges
    edges.stop_all()


async def connect(cluster: NatsCluster, role: Role, **options: Any) -> NatsClient:
    """A nats-py client with `role`'s permissions on every node of `cluster`: a backend,
    the operator, or an edge's rights (which may read every stream's info). The
    credentials go as options, not in the URLs: nats-py reconnects to servers it
    learned from the cluster too, and those URLs would carry none."""
    user, password = cluster.credentials(role)
    return await nats.connect(
        servers=[node.address for node in cluster.nodes],
        user=user,
        password=password,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        **options,
    )


def node_of(cluster: NatsCluster, connection_name: str) -> str | None:
    """The name of the node a client (by its NATS connection name) is connected to."""
    for node in cluster.running():
        for conn in node.monitor("connz?limit=1024").get("connections") or []:
            if conn.get("name") == connection_name:
                return node.name
    return None
