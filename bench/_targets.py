"""The servers under test, started with the project's launcher (switchboard.cli.launch)
as `switchboard dev` and the tests start them:

  switchboard  a nats-server (the backbone, JetStream on) + one edge process
               (`python -m switchboard edge`, configured by SB_EDGE_* variables).
  reference    a second nats-server with its own WebSocket listener
               (`websocket { listen: "127.0.0.1:PORT", no_tls: true }`); clients speak
               the NATS text protocol over WebSocket.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

from _config import SECRET, Cleanup
from _machine import http_get, prom_value

from switchboard.cli.launch import EdgeProcess, LocalProcess, free_port, wait_for_port
from switchboard.cli.natsserver import NatsServer, find_binary


def run_step(cleanup: Cleanup, fn: Callable[[], object]) -> None:
    """Run a cleanup function now and drop it from the list."""
    with contextlib.suppress(ValueError):
        cleanup.remove(fn)
    fn()


def start_backbone(tmp: str, cleanup: Cleanup) -> NatsServer:
    backbone = NatsServer(store_dir=os.path.join(tmp, "js"))
    cleanup.append(backbone.stop)
    backbone.start()
    return backbone


def start_edge(
    backbone: NatsServer,
    tmp: str,
    cleanup: Cleanup,
    *,
    max_connections: int,
) -> EdgeProcess:
    """One edge process, ready; upgrade rate limits and the connection cap out of the way."""
    settings = {
        "max_connections": max_connections,
        "new_connections_per_s": 1000000,
        "new_connections_burst": 1000000,
        # per-connection "connected"/"disconnected" lines are INFO: keep them out
        "log_level": "WARNING",
        # SIGTERM drains; no operator here, so do not wait on one or pace the drain
        "drain_grant_timeout_s": 0.2,
        "drain_timeout_s": 0,
    }
    edge = EdgeProcess.on(
        backbone,
        "bench-edge",
        jwt_secret=SECRET,
        log_path=os.path.join(tmp, "edge.log"),
        settings=settings,
    )
    cleanup.append(edge.stop)
    edge.spawn().wait_ready(30, readyz=True)
    return edge


def edge_metrics(admin_port: int) -> str:
    """The edge's /metrics, on its admin port (the client port serves only /v1/*)."""
    return http_get(f"http://127.0.0.1:{admin_port}/metrics")


class Switchboard:
    """The Switchboard target: a backbone nats-server and one edge process."""

    name = "switchboard"  # in progress lines
    mode = "switchboard"  # the load generators' client protocol

    def __init__(self, backbone: NatsServer, edge: EdgeProcess) -> None:
        self.backbone = backbone
        self.edge = edge
        self.port = edge.port

    @property
    def pid(self) -> int:
        return self.edge.pid

    @property
    def ws_url(self) -> str:
        return self.edge.ws_url

    @property
    def nats_url(self) -> str:
        """Where a publisher publishes (the backbone)."""
        return self.backbone.url

    @property
    def extra_pids(self) -> dict[str, int]:
        """Other processes of this target whose CPU is reported on its own."""
        assert self.backbone.process is not None
        return {"backbone_nats_server": self.backbone.process.pid}

    def metrics(self) -> str:
        return edge_metrics(self.edge.admin_port)

    def slow_consumers(self) -> dict[str, float]:
        """Clients dropped for not keeping up, so far (JSON field: its value)."""
        total = prom_value(self.metrics(), "sb_edge_slow_consumer_evictions_total")
        return {"slow_consumer_evictions": total}

    def check_and_stop(self, cleanup: Cleanup) -> None:
        """Fail if the edge died during the measurement, then stop both processes now."""
        self.edge.check_alive("edge")
        run_step(cleanup, self.edge.stop)
        run_step(cleanup, self.backbone.stop)


def start_switchboard(tmp: str, cleanup: Cleanup, *, max_connections: int) -> Switchboard:
    backbone = start_backbone(tmp, cleanup)
    edge = start_edge(backbone, tmp, cleanup, max_connections=max_connections)
    return Switchboard(backbone, edge)


class Reference:
    """nats-server with its own WebSocket listener (the reference)."""

    name = "nats-server ws"
    mode = "nats"

    def __init__(self, proc: LocalProcess, port: int, http_port: int, ws_port: int) -> None:
        self.proc = proc
        self.port = port
        self.http_port = http_port
        self.ws_port = ws_port

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def extra_pids(self) -> dict[str, int]:
        return {}

    def varz(self) -> dict[str, Any]:
        return dict(json.loads(http_get(f"http://127.0.0.1:{self.http_port}/varz")))

    def slow_consumers(self) -> dict[str, float]:
        """Clients flagged as slow consumers, so far (JSON field: its value)."""
        return {"slow_consumers": int(self.varz().get("slow_consumers", 0))}

    def check_and_stop(self, cleanup: Cleanup) -> None:
        """Fail if the server died during the measurement, then stop it now."""
        self.proc.check_alive("reference nats-server")
        run_step(cleanup, self.proc.stop)


Target = Switchboard | Reference


def start_reference(tmp: str, cleanup: Cleanup) -> Reference:
    port, http_port, ws_port = free_port(), free_port(), free_port()
    conf = os.path.join(tmp, "reference.conf")
    with open(conf, "w") as f:
        f.write(
            f"""
host: 127.0.0.1
port: {port}
http: "127.0.0.1:{http_port}"
max_connections: 1000000
websocket {{
  listen: "127.0.0.1:{ws_port}"
  no_tls: true
  compression: false
}}
"""
        )
    log_path = os.path.join(tmp, "reference-nats.log")
    proc = LocalProcess([find_binary(), "-c", conf], None, log_path, stop_timeout_s=15)
    cleanup.append(proc.stop)
    proc.spawn()
    for p in (port, http_port, ws_port):
        wait_for_port(p, 15)
    proc.check_alive("reference nats-server")
    return Reference(proc, port, http_port, ws_port)
