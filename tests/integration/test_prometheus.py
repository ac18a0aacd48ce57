"""A real Prometheus server (Debian's `prometheus`) scraping real edges.

What these tests show that reading /metrics ourselves cannot: that Prometheus' own
parser accepts every exposition (one bad label value fails the whole scrape of a
pod), and that the series, histograms and dashboard queries work in PromQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from switchboard.client import Client, SwitchboardError
from switchboard.natsserver import NatsServer, free_port, stop_process, wait_for_port
from tests.conftest import EdgeFactory, token
from tests.integration.helpers import settle

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE_INTERVAL_S = 1


@dataclass(frozen=True)
class Target:
    """One scrape target: `host:port` and the labels Kubernetes discovery would add."""

    address: str
    labels: Mapping[str, str]


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (empty: no data)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active

    def wait_scraped(self, count: int, timeout_s: float = 20) -> list[dict[str, Any]]:
        """The targets once each was scraped at least `count` times after now (a
        scrape that started before now may predate the traffic)."""
        deadline = time.monotonic() + timeout_s
        since = time.time()
        while True:
            targets = self.targets()
            scraped = [t for t in targets if _epoch(t["lastScrape"]) > since + count - 1]
            if targets and len(scraped) == len(targets):
                return targets
            if time.monotonic() > deadline:
                raise TimeoutError(f"targets not scraped: {targets}\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _epoch(rfc3339: str) -> float:
    """Prometheus' `lastScrape` (RFC 3339, nanoseconds) as seconds since the epoch."""
    if rfc3339.startswith("0001-"):
        return 0.0
    stamp, _, frac = rfc3339.rstrip("Z").partition(".")
    seconds = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    digits = "".join(ch for ch in frac if ch.isdigit())
    return seconds + (float(f"0.{digits}") if digits else 0.0)


@contextlib.contextmanager
def run_prometheus(tmp: Path, jobs: Mapping[str, list[Target]]) -> Iterator[Prometheus]:
    """Prometheus scraping `jobs` every second; stopped (SIGTERM) at the end."""
    if not os.path.exists(PROMETHEUS):
        if os.environ.get("CI"):
            pytest.fail(f"prometheus not found at {PROMETHEUS}: .ci/run installs it")
        pytest.skip(f"prometheus not found at {PROMETHEUS} (apt-get install prometheus)")
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
            "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
        },
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [t.address], "labels": dict(t.labels)} for t in ts],
            }
            for job, ts in jobs.items()
        ],
    }
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp / "prometheus.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
        )
    try:
        wait_for_port(port, 30)
        prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as ready:
                    if ready.status == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready:\n{prometheus.log()}")
            time.sleep(0.1)
        yield prometheus
    finally:
        stop_process(process, 20)


def edge_target(address: str, pod: str) -> Target:
    return Target(address, {"namespace": "switchboard", "pod": pod, "container": "edge"})


async def test_a_backend_error_code_with_a_quote_leaves_the_scrape_parsable(
    edge_factory: EdgeFactory, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A backend's `Sb-Error` code is any string: one with `"` or `\\` must neither
    break the exposition (Prometheus' parser rejects a whole scrape over one bad
    label value) nor add a series per distinct code (counted as `other`)."""
    edge = edge_factory.start("prom-quote")
    backend = await nats.connect(nats_server.url)

    async def answer(msg: Any) -> None:
        await backend.publish(msg.reply, b"nope", headers={"Sb-Error": json.loads(msg.data)})

    await backend.subscribe("sb.rpc.fail", cb=answer)
    await settle(backend)
    client = await Client.connect(edge.ws_url, token=token("quoter"))
    try:
        for code in ('bad"code', "back\\slash", "conflict"):
            with pytest.raises(SwitchboardError) as raised:
                await client.rpc("fail", code)
            assert raised.value.code == code  # the client still gets it verbatim
    finally:
        await client.close()
        await backend.close()

    target = edge_target(f"127.0.0.1:{edge.port}", edge.name)
    with run_prometheus(tmp_path, {"switchboard-edge": [target]}) as prometheus:
        (scraped,) = prometheus.wait_scraped(1)
        assert scraped["health"] == "up", scraped["lastError"]
        errors = {
            sample["metric"]["code"]: float(sample["value"][1])
            for sample in prometheus.query('sb_edge_errors_total{pod="prom-quote"}')
        }
        assert errors == {"other": 3.0}
