"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

Why not a fake API: the operator's behaviour depends on what real controllers do
(Deployments create ReplicaSets create Pods, garbage collection, service-account tokens)
and on real RBAC refusals. There is no kubelet and no scheduler, so Pods stay Pending;
the tests only need the Pod objects.

Everything is generated on the fly in a temporary directory (a CA, serving and client
certificates, the service-account signing key), every port is a free loopback port, and
``stop()`` ends every process started here. Plain Python: no pytest in this module.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# The controllers the tests rely on, not the whole default set: fewer informers and
# goroutines on a 2-core CI machine, and nothing node-related without nodes.
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "endpointslice-controller",
    "disruption-controller",
    "job-controller",
)

# Starts retried when a picked free port was taken before the component bound it.
_START_ATTEMPTS = 3


class ControlPlaneError(RuntimeError):
    """A component failed to start or become ready; the message holds its log tail."""


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Child side of fork: get SIGKILL if the test process dies, so nothing is orphaned.

    SIGKILL, not SIGTERM: the apiserver's graceful shutdown waits on etcd, which gets the
    same signal, and nobody is left to care about a clean exit.

    Linux sends it when the *thread* that forked exits, so this is only used from the
    main thread (see ``ControlPlane._spawn``).
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


# ---------------------------------------------------------------------------------------
# PKI


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _certificate(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, *, ca: bool
) -> x509.CertificateBuilder:
    """What every certificate here shares: a week's validity and a digital-signature key
    usage (plus certificate signing for the CA)."""
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
    )


class _Pki:
    """A throw-away CA that signs the apiserver's serving cert and the client certs."""

    def __init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "switchboard-test-ca")])
        self.ca_cert = (
            _certificate(name, name, self.ca_key.public_key(), ca=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )

    def issue(
        self,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        server_names: tuple[str, ...] = (),
        server_ips: tuple[str, ...] = (),
    ) -> tuple[bytes, bytes]:
        """Return (cert PEM, key PEM): a client cert, or a serving cert if names are given."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        serving = bool(server_names or server_ips)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if serving else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            _certificate(x509.Name(attrs), self.ca_cert.subject, key.public_key(), ca=False)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
        )
        if serving:
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        return _pem_cert(cert), _pem_key(key)


def _write_private(path: Path, data: bytes) -> Path:
    """Write key material readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _kubeconfig(server: str, ca_pem: bytes, user: Mapping[str, str]) -> dict[str, Any]:
    """A one-context kubeconfig (JSON is valid YAML, so every client reads it)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "switchboard-test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "user", "user": dict(user)}],
        "contexts": [
            {"name": "switchboard-test", "context": {"cluster": "switchboard-test", "user": "user"}}
        ],
        "current-context": "switchboard-test",
    }


# ---------------------------------------------------------------------------------------
# The control plane


class ControlPlane:
    """etcd + kube-apiserver (RBAC) + kube-controller-manager on free loopback ports."""

    def __init__(
        self,
        binaries: Mapping[str, Path],
        *,
        controllers: tuple[str, ...] = CONTROLLERS,
        keep_under: Path | None = None,
        address: str = "127.0.0.1",
        apiserver_args: tuple[str, ...] = (),
    ) -> None:
        """``binaries`` maps etcd, kube-apiserver and kube-controller-manager to paths.

        ``address`` is where the apiserver listens and what it advertises. On loopback
        (the default) the ``kubernetes`` Service has no endpoints; on an address pods can
        route to (tests/realnode's bridge), the apiserver keeps them, so in-cluster
        clients reach it through the Service. ``apiserver_args`` go after the defaults.

        State (keys, kubeconfigs, etcd data, logs) goes to a fresh temporary directory that
        ``stop()`` deletes, or, with ``keep_under``, to a new directory inside it that is
        kept for post-mortems.
        """
        self.binaries = {name: Path(path) for name, path in binaries.items()}
        for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
            if name not in self.binaries:
                raise ControlPlaneError(f"no binary given for {name}")
        self.controllers = controllers
        self._keep_under = keep_under
        self.address = address
        self.apiserver_args = apiserver_args
        self._pki: _Pki | None = None
        self.workdir: Path | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.etcd_port = 0
        self.apiserver_port = 0
        self._ssl: ssl.SSLContext | None = None
        self._ca_pem = b""

    # -- lifecycle ------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The apiserver's URL."""
        return f"https://{self.address}:{self.apiserver_port}"

    def _path(self, name: str) -> Path:
        if self.workdir is None:
            raise ControlPlaneError("the control plane is not started")
        return self.workdir / name

    def start(self) -> Self:
        """Generate credentials and start etcd, kube-apiserver and kube-controller-manager.

        Returns once the apiserver answers /readyz; call ``wait_ready()`` to also wait for
        the controllers. Free ports are picked just before use, so another process can take
        one in between: that start is retried on fresh ports. On a failure every started
        process is stopped again.
        """
        if self.processes:
            raise ControlPlaneError("already started")
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start_once()
                return self
            except ControlPlaneError as e:
                if attempt == _START_ATTEMPTS or "address already in use" not in str(e):
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        if self._keep_under is not None:
            self._keep_under.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="sb-k8s-", dir=self._keep_under))
        try:
            self._write_credentials()
            self._start_etcd()
            self._start_apiserver()
            self._wait_apiserver_ready(timeout=90)
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process this object started (newest first) and delete its files.

        Throw-away state needs no graceful shutdown: each process gets a few seconds
        after SIGTERM, then SIGKILL. Stopping clients before their server keeps it short.
        """
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.processes.clear()
        if self.workdir is not None and self._keep_under is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None
        self._ssl = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait for /readyz and for the controllers: the default ServiceAccount must exist.

        Pod creation is refused until a namespace's ``default`` ServiceAccount exists, and
        the serviceaccount controller creating it shows the controller manager is working.
        """
        deadline = time.monotonic() + timeout
        self._wait_apiserver_ready(timeout=timeout)
        path = "/api/v1/namespaces/default/serviceaccounts/default"
        while True:
            self._check_alive()
            try:
                self.request("GET", path)
                return
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    "the controller manager did not create the default ServiceAccount in "
                    f"{timeout}s\n{self.log_tail('kube-controller-manager')}"
                )
            time.sleep(0.2)

    # -- clients --------------------------------------------------------------------

    def admin_kubeconfig(self) -> Path:
        """A kubeconfig for a system:masters client certificate."""
        return self._path("admin.kubeconfig")

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> Path:
        """A kubeconfig carrying a TokenRequest token for the ServiceAccount namespace/name.

        The ServiceAccount must exist. This is the identity an in-cluster client would have.
        """
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        result = self.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body
        )
        token = result["status"]["token"]
        config = _kubeconfig(self.server, self._ca_pem, {"token": token})
        path = self._path(f"sa-{namespace}-{name}.kubeconfig")
        return _write_private(path, json.dumps(config, indent=2).encode())

    def client_kubeconfig(
        self, filename: str, common_name: str, organizations: tuple[str, ...] = ()
    ) -> Path:
        """A kubeconfig for a client certificate (a node's kubelet, the scheduler...)."""
        if self._pki is None:
            raise ControlPlaneError("the control plane is not started")
        cert, key = self._pki.issue(common_name, organizations=organizations)
        user = {
            "client-certificate-data": base64.b64encode(cert).decode(),
            "client-key-data": base64.b64encode(key).decode(),
        }
        config = _kubeconfig(self.server, self._ca_pem, user)
        return _write_private(self._path(filename), json.dumps(config, indent=2).encode())

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, timeout: float = 10
    ) -> dict[str, Any]:
        """One JSON API call as the admin (raises urllib.error.HTTPError on a non-2xx answer)."""
        raw = self._http(method, path, body, timeout)
        decoded = json.loads(raw) if raw else {}
        if not isinstance(decoded, dict):
            raise ControlPlaneError(f"{method} {path}: expected a JSON object")
        return decoded

    def _http(
        self, method: str, path: str, body: Mapping[str, Any] | None, timeout: float
    ) -> bytes:
        if self._ssl is None:
            raise ControlPlaneError("the control plane is not started")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as resp:
            raw: bytes = resp.read()
        return raw

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The end of a component's log, for failure messages."""
        if self.workdir is None:
            return f"({name}: no log, not started)"
        try:
            text = (self.workdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return f"({name}: no log)"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {name}.log ---\n{tail}"

    # -- internals ------------------------------------------------------------------

    def _write_credentials(self) -> None:
        pki = self._pki = _Pki()
        self._ca_pem = _pem_cert(pki.ca_cert)
        self._path("ca.crt").write_bytes(self._ca_pem)
        cert, key = pki.issue(
            "kube-apiserver",
            server_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            # 10.0.0.1 is the `kubernetes` Service's ClusterIP in SERVICE_CIDR.
            server_ips=tuple(dict.fromkeys(("127.0.0.1", "10.0.0.1", self.address))),
        )
        self._path("apiserver.crt").write_bytes(cert)
        _write_private(self._path("apiserver.key"), key)

        sa_key = ec.generate_private_key(ec.SECP256R1())
        _write_private(self._path("sa.key"), _pem_key(sa_key))
        self._path("sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

        self.etcd_port = free_port()
        self.apiserver_port = free_port()
        for filename, common_name, orgs in (
            ("admin", "switchboard-test-admin", ("system:masters",)),
            ("kube-controller-manager", "system:kube-controller-manager", ()),
        ):
            cert, key = pki.issue(common_name, organizations=orgs)
            _write_private(self._path(f"{filename}.crt"), cert)
            _write_private(self._path(f"{filename}.key"), key)
            user = {
                "client-certificate-data": base64.b64encode(cert).decode(),
                "client-key-data": base64.b64encode(key).decode(),
            }
            config = _kubeconfig(self.server, self._ca_pem, user)
            _write_private(
                self._path(f"{filename}.kubeconfig"), json.dumps(config, indent=2).encode()
            )

        ctx = ssl.create_default_context(cafile=str(self._path("ca.crt")))
        ctx.load_cert_chain(self._path("admin.crt"), self._path("admin.key"))
        self._ssl = ctx

    def _spawn(self, name: str, args: list[str]) -> None:
        log_path = self._path(f"{name}.log")
        in_main_thread = threading.current_thread() is threading.main_thread()
        with open(log_path, "ab") as log:
            self.processes[name] = subprocess.Popen(
                [str(self.binaries[name]), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent if in_main_thread else None,
            )

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            code = proc.poll()
            if code is not None:
                raise ControlPlaneError(f"{name} exited with {code}\n{self.log_tail(name)}")

    def _start_etcd(self) -> None:
        peer_port = free_port()
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self._path('etcd-data')}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                # Throw-away data: skipping fsync makes every write much cheaper.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        deadline = time.monotonic() + 30
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=2) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"etcd not healthy in 30s\n{self.log_tail('etcd')}")
            time.sleep(0.1)

    def _start_apiserver(self) -> None:
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self._path('apiserver-certs')}",
                f"--tls-cert-file={self._path('apiserver.crt')}",
                f"--tls-private-key-file={self._path('apiserver.key')}",
                f"--client-ca-file={self._path('ca.crt')}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self._path('sa.pub')}",
                f"--service-account-signing-key-file={self._path('sa.key')}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # The `kubernetes` Service cannot point at 127.0.0.1 (loopback endpoints
                # are invalid): there, nothing runs Pods that would use it.
                "--endpoint-reconciler-type="
                + ("none" if ipaddress.ip_address(self.address).is_loopback else "lease"),
                "--profiling=false",
                *self.apiserver_args,
            ],
        )

    def _wait_apiserver_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            self._check_alive()
            try:
                self._http("GET", "/readyz", None, timeout=5)
                return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except (OSError, ValueError) as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"kube-apiserver not ready in {timeout}s ({last})\n"
                    f"{self.log_tail('kube-apiserver')}"
                )
            time.sleep(0.2)

    def _start_controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self._path('kube-controller-manager.kubeconfig')}",
                f"--service-account-private-key-file={self._path('sa.key')}",
                f"--root-ca-file={self._path('ca.crt')}",
                "--use-service-account-credentials=true",
                f"--controllers={','.join(self.controllers)}",
                # One instance, and a restart must not wait out a stale lease.
                "--leader-elect=false",
                # No metrics or health endpoint: nothing scrapes it, and no port is taken.
                "--secure-port=0",
                f"--cert-dir={self._path('controller-manager-certs')}",
            ],
        )
