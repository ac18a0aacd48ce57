"""A real 3-node NATS cluster (JetStream, routes on loopback, a store per node, the
role users and permissions the chart runs) and edges connected to all of it, for the
replication and node-loss tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from switchboard.cli.natsserver import NatsCluster
from switchboard.contract.permissions import Role
from tests.conftest import EdgeFactory

# Edge processes whose SB_EDGE_NATS_URL lists every node of the cluster.
ClusterEdges = EdgeFactory


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
