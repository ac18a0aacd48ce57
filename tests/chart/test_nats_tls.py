"""TLS on the bundled NATS as the chart renders it: three real nats-servers whose
routes verify each other's certificate, clients that must trust the CA, roles on."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from switchboard.cli.natsserver import free_port, stop_process, wait_for_port
from switchboard.contract.natsauth import NatsCredentials, connect_options
from tests.chart.render import container, find, parse, render
from tests.chart.test_nats import PASSWORDS, _conf, _nats_server, _server_env


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certificates(directory: Path) -> None:
    """ca.crt, and tls.crt/tls.key for servers and routes (as cert-manager would issue:
    server and client auth), valid for loopback."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("switchboard test CA"))
        .issuer_name(_name("switchboard test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("sb-switchboard-nats"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(_pem(key))


def _start_cluster(
    conf: str, tmp_path: Path, env: dict[str, str]
) -> list[tuple[int, int, subprocess.Popen[bytes]]]:
    """The rendered config, its three servers moved to loopback ports."""
    routes = re.findall(r"nats://[^\s,\]]+:6222", conf)
    assert len(routes) == 3
    ports = [(free_port(), free_port(), free_port()) for _ in routes]
    running = []
    for i, (client, monitor, route) in enumerate(ports):
        text = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{client}")
        text = text.replace("http_port: 8222", f"http_port: {monitor}")
        text = text.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{route}")
        for j, url in enumerate(routes):
            text = text.replace(url, f"nats://127.0.0.1:{ports[j][2]}")
        text = text.replace("store_dir: /data", f"store_dir: {tmp_path / f'js{i}'}")
        text = text.replace("/var/run/nats/nats.pid", str(tmp_path / f"nats{i}.pid"))
        text = text.replace("/etc/nats-tls/", f"{tmp_path}/")
        path = tmp_path / f"nats{i}.conf"
        path.write_text(text)
        server = subprocess.Popen(
            [_nats_server(), "--config", str(path)],
            env={**os.environ, **env, "SERVER_NAME": f"sb-switchboard-nats-{i}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        running.append((client, monitor, server))
    for client, _, _ in running:
        wait_for_port(client)
    return running


def _routes(monitor: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/routez", timeout=2) as response:
        return int(json.load(response)["num_routes"])


async def test_tls_clients_and_verified_routes_with_roles(tmp_path: Path) -> None:
    values = {"nats": {"replicas": 3, "tls": {"enabled": True, "secretName": "nats-tls"}}}
    docs = parse(render(values))
    conf = _conf(docs)
    assert conf.count("verify: true") == 1  # routes check each other's certificate
    make_certificates(tmp_path)
    servers = _start_cluster(conf, tmp_path, _server_env(docs))
    try:
        async with asyncio.timeout(20):
            while not all(_routes(m) >= 2 for _, m, _ in servers):
                await asyncio.sleep(0.2)
        port = servers[0][0]
        trusted = NatsCredentials(
            nats_user="sb-backend",
            nats_password=PASSWORDS["backend"],
            nats_tls_ca_file=tmp_path / "ca.crt",
        )
        nc = await nats.connect(f"nats://127.0.0.1:{port}", **connect_options(trusted))
        assert nc.connected_url is not None
        sub = await nc.subscribe("sb.ch.tls")
        await nc.flush()
        other = await nats.connect(f"nats://127.0.0.1:{servers[2][0]}", **connect_options(trusted))
        # The subscription's interest reaches the third server over the route a moment
        # later (longer on a busy machine): until then it drops what is published there.
        # So publish until one arrives, bounded.
        async with asyncio.timeout(20):
            while True:
                await other.publish("sb.ch.tls", b'"over a verified route"')
                try:
                    msg = await sub.next_msg(0.5)
                    break
                except nats.errors.TimeoutError:
                    continue
        assert msg.data == b'"over a verified route"'
        await other.close()
        await nc.close()
        # without the CA the server's certificate is not trusted
        untrusted = NatsCredentials(nats_user="sb-backend", nats_password=PASSWORDS["backend"])
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(
                f"tls://127.0.0.1:{port}",
                allow_reconnect=False,
                **connect_options(untrusted),
            )
    finally:
        for _, _, server in servers:
            stop_process(server)


def test_clients_trust_the_ca_of_the_nats_certificate() -> None:
    docs = parse(render({"nats": {"tls": {"enabled": True, "secretName": "nats-tls"}}}))
    for kind, name, prefix in (
        ("Deployment", "-edge", "SB_EDGE_"),
        ("Deployment", "-operator", "SB_OPERATOR_"),
    ):
        spec = find(docs, kind, name)["spec"]["template"]["spec"]
        main = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in main["env"]}
        assert env[f"{prefix}NATS_TLS_CA_FILE"] == "/etc/switchboard/nats-ca/ca.crt"
        (volume,) = [v for v in spec["volumes"] if v["name"] == "nats-ca"]
        assert volume["secret"]["secretName"] == "nats-tls"
    nats_spec = find(docs, "StatefulSet", "-nats")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container(nats_spec, "nats")["volumeMounts"]}
    assert mounts["tls"] == "/etc/nats-tls"


def test_cert_manager_issues_the_certificate_when_no_secret_is_named() -> None:
    values = {
        "nats": {"tls": {"enabled": True, "certManager": {"issuerRef": {"name": "internal-ca"}}}}
    }
    docs = parse(render(values))
    cert = find(docs, "Certificate")
    assert cert["spec"]["issuerRef"]["name"] == "internal-ca"
    assert cert["spec"]["usages"] == ["server auth", "client auth"]
    assert (
        "*.sb-switchboard-nats-headless.switchboard.svc.cluster.local" in cert["spec"]["dnsNames"]
    )
    with pytest.raises(Exception, match=r"nats\.tls\.secretName"):
        render({"nats": {"tls": {"enabled": True}}})
