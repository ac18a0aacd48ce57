"""The three servers bench/compare.py measures, and the Go binaries it needs.

  switchboard  one edge process (`python -m switchboard edge`) behind its own nats-server
               (the backbone); publishes go to the backbone as a backend's would.
  nats         nats-server's own WebSocket listener (same binary as the backbone); the
               clients speak the NATS protocol over WebSocket.
  centrifugo   Centrifugo (built from the Go module proxy, pinned), HS256 tokens,
               subscribe allowed for clients, publishes through its HTTP API.

Each is started fresh for one measurement and stopped after it. The load generator
(bench/loadgen, Go) and Centrifugo are built with `go` into a cache outside the
repository (`SB_BENCH_CACHE`, default ~/.cache/switchboard-bench), so a warm run builds
nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from switchboard.cli.natsserver import NatsServer, find_binary  # noqa: E402

LOADGEN_DIR = ROOT / "bench" / "loadgen"
CENTRIFUGO_MODULE = "github.com/centrifugal/centrifugo/v6"
CENTRIFUGO_VERSION = "v6.9.1"
SECRET = "bench-secret-that-is-long-enough-for-hs256"
API_KEY = "bench-api-key"
TARGETS = ("switchboard", "nats", "centrifugo")
LABELS = {
    "switchboard": "Switchboard edge",
    "nats": "nats-server WS",
    "centrifugo": f"Centrifugo {CENTRIFUGO_VERSION}",
}


class BenchError(RuntimeError):
    """Something the benchmark needs is missing or failed; the message says what."""


# --------------------------------------------------------------------------- Go builds


def cache_dir() -> Path:
    root = os.environ.get("SB_BENCH_CACHE") or str(Path.home() / ".cache" / "switchboard-bench")
    return Path(root).expanduser()


def find_go() -> str:
    """`go` on PATH, else the usual /usr/local/go/bin/go."""
    found = shutil.which("go") or (
        "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None
    )
    if found is None:
        raise BenchError("`go` not found (PATH or /usr/local/go/bin): Go >= 1.26 builds the bench")
    return found


def _go(args: list[str], cwd: Path, env: dict[str, str] | None = None, what: str = "") -> None:
    run_env = os.environ | {"CGO_ENABLED": "0"} | (env or {})
    started = time.monotonic()
    proc = subprocess.run(
        [find_go(), *args], cwd=cwd, env=run_env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr)[-4000:]
        raise BenchError(f"go {' '.join(args)} failed (exit {proc.returncode}) in {cwd}:\n{out}")
    if what:
        print(f"built {what} in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)


def loadgen_binary() -> Path:
    """The load generator, built once per version of its sources (go.mod, go.sum, *.go)."""
    digest = hashlib.sha256()
    for path in sorted(LOADGEN_DIR.iterdir()):
        if path.name in ("go.mod", "go.sum") or (
            path.suffix == ".go" and not path.name.endswith("_test.go")
        ):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    target = cache_dir() / f"loadgen-{digest.hexdigest()[:16]}"
    if not os.access(target, os.X_OK):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        _go(
            ["build", "-trimpath", "-o", str(tmp), "."],
            LOADGEN_DIR,
            {"GOFLAGS": "-mod=readonly"},
            "the load generator",
        )
        os.replace(tmp, target)
    return target


def centrifugo_binary() -> Path:
    """Centrifugo at CENTRIFUGO_VERSION, `go install`ed from the module proxy (cached).

    The cached binary is reused only if `go version -m` says it is that module version.
    A cold build takes minutes (it compiles Centrifugo's whole dependency graph).
    """
    bin_dir = cache_dir() / "bin"
    target = bin_dir / "centrifugo"
    if os.access(target, os.X_OK) and _module_version(target) == CENTRIFUGO_VERSION:
        return target
    bin_dir.mkdir(parents=True, exist_ok=True)
    plain = CENTRIFUGO_VERSION.lstrip("v")
    print(
        f"building Centrifugo {CENTRIFUGO_VERSION} into {bin_dir} (cold: several minutes)",
        file=sys.stderr,
        flush=True,
    )
    _go(
        [
            "install",
            f"-ldflags=-s -w -X {CENTRIFUGO_MODULE}/internal/build.Version={plain}",
            f"{CENTRIFUGO_MODULE}@{CENTRIFUGO_VERSION}",
        ],
        cache_dir(),
        {"GOBIN": str(bin_dir)},
        f"Centrifugo {CENTRIFUGO_VERSION}",
    )
    found = _module_version(target)
    if found != CENTRIFUGO_VERSION:
        raise BenchError(f"{target} reports module version {found}, not {CENTRIFUGO_VERSION}")
    return target


def _module_version(binary: Path) -> str | None:
    """The main module's version recorded in a Go binary (`go version -m`)."""
    try:
        out = subprocess.run(
            [find_go(), "version", "-m", str(binary)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "mod" and parts[1] == CENTRIFUGO_MODULE:
            return parts[2]
    return None


def go_version() -> str:
    try:
        return subprocess.run(
            [find_go(), "version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, BenchError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float
) -> None:
    """Poll `url` until it answers 200, failing early (with the log's tail) if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{what} exited with {proc.returncode} on start-up:\n{tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready at {url} in {timeout:.0f}s (log: {log})")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Running:
    """A started target: what the load generator needs, and how to stop it."""

    name: str
    ws_url: str
    publish_url: str
    pids: dict[str, int]  # the server under test first, then helpers (the backbone)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    backbone: NatsServer | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def server_pid(self) -> int:
        return next(iter(self.pids.values()))

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise BenchError(f"{self.name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        if self.backbone is not None:
            self.backbone.stop()


def _spawn(args: list[str], env: dict[str, str] | None, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)


def start_switchboard(tmp: Path, max_connections: int) -> Running:
    """A backbone nats-server and one edge, limits on new connections out of the way."""
    backbone = NatsServer(store_dir=str(tmp / "backbone-js"))
    backbone.start()
    port = free_port()
    env = os.environ | {
        "SB_EDGE_HOST": "127.0.0.1",
        "SB_EDGE_PORT": str(port),
        "SB_EDGE_POD_NAME": "bench-edge",
        "SB_EDGE_NATS_URL": backbone.url,
        "SB_EDGE_JWT_SECRET": SECRET,
        "SB_EDGE_MAX_CONNECTIONS": str(max_connections),
        "SB_EDGE_NEW_CONNECTIONS_PER_S": "1000000",
        "SB_EDGE_NEW_CONNECTIONS_BURST": "1000000",
        "SB_EDGE_LOG_LEVEL": "WARNING",  # no line per connection
        "SB_EDGE_DRAIN_GRANT_TIMEOUT_S": "0.2",  # no operator: SIGTERM drains at once
        "SB_EDGE_DRAIN_TIMEOUT_S": "0",
    }
    log = tmp / "edge.log"
    try:
        edge = _spawn([sys.executable, "-m", "switchboard", "edge"], env, log)
    except BaseException:
        backbone.stop()
        raise
    assert backbone.process is not None
    running = Running(
        "switchboard",
        f"ws://127.0.0.1:{port}/v1/ws",
        backbone.url,
        {"server": edge.pid, "backbone": backbone.process.pid},
        [edge],
        backbone,
        [log],
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", edge, "the edge", log, 60)
    except BaseException:
        running.stop()
        raise
    return running


def start_nats(tmp: Path) -> Running:
    """nats-server with its WebSocket listener (no TLS, no compression)."""
    port, http_port, ws_port = free_port(), free_port(), free_port()
    conf = tmp / "nats-ws.conf"
    conf.write_text(
        f"""host: 127.0.0.1
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
    log = tmp / "nats-ws.log"
    proc = _spawn([find_binary(), "-c", str(conf)], None, log)
    running = Running(
        "nats",
        f"ws://127.0.0.1:{ws_port}",
        f"nats://127.0.0.1:{port}",
        {"server": proc.pid},
        [proc],
        logs=[log],
    )
    try:
        wait_http(f"http://127.0.0.1:{http_port}/healthz", proc, "nats-server", log, 30)
    except BaseException:
        running.stop()
        raise
    return running


def centrifugo_config(port: int) -> dict[str, object]:
    """Centrifugo v6 configuration: HS256 connection tokens, subscribe allowed for
    clients in channels without a namespace, the HTTP API behind a key, nothing else."""
    return {
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "error"},
        "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["*"]},
        "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
        "http_api": {"key": API_KEY},
        "health": {"enabled": True},
        "usage_stats": {"disabled": True},
    }


def start_centrifugo(tmp: Path, binary: Path) -> Running:
    port = free_port()
    conf = tmp / "centrifugo.json"
    conf.write_text(json.dumps(centrifugo_config(port), indent=2))
    log = tmp / "centrifugo.log"
    proc = _spawn([str(binary), "--config", str(conf)], None, log)
    running = Running(
        "centrifugo",
        f"ws://127.0.0.1:{port}/connection/websocket",
        f"http://127.0.0.1:{port}/api",
        {"server": proc.pid},
        [proc],
        logs=[log],
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, "centrifugo", log, 30)
    except BaseException:
        running.stop()
        raise
    return running
