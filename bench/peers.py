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
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from switchboard.cli.launch import EdgeProcess, LocalProcess, free_port  # noqa: E402
from switchboard.cli.natsserver import NatsServer, find_binary  # noqa: E402

LOADGEN_DIR = ROOT / "bench" / "loadgen"
CENTRIFUGO_MODULE = "github.com/centrifugal/centrifugo/v6"
CENTRIFUGO_VERSION = "v6.9.1"
SECRET = "bench-secret-that-is-long-enough-for-hs256"
API_KEY = "bench-api-key"
TARGETS = ("switchboard", "nats", "centrifugo")
# Two edge processes on one backbone, connections spread round-robin: what two 1-CPU
# edge pods on a 2-core node are (the edge is one process on one core). Opt-in.
EXTRA_TARGETS = ("switchboard-x2",)
LABELS = {
    "switchboard": "Switchboard edge",
    "switchboard-x2": "Switchboard 2 edges",
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


def wait_http(url: str, proc: LocalProcess, what: str, timeout: float) -> None:
    """Poll `url` until it answers 200, failing early (with the log's tail) if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.check_alive(what)
        except RuntimeError as exc:
            raise BenchError(str(exc)) from None
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready at {url} in {timeout:.0f}s (log: {proc.log_path})")
        time.sleep(0.1)


@dataclass
class Running:
    """A started target: what the load generator needs, and how to stop it."""

    name: str
    proto: str  # the load generator's -proto: switchboard, nats or centrifugo
    ws_url: str
    publish_url: str
    # the server under test first (several processes under one name are summed by the
    # load generator), then helpers (the backbone)
    pids: list[tuple[str, int]]
    procs: list[LocalProcess] = field(default_factory=list)
    backbone: NatsServer | None = None

    def check_alive(self) -> None:
        for proc in self.procs:
            try:
                proc.check_alive(self.name)
            except RuntimeError as exc:
                raise BenchError(str(exc)) from None

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.backbone is not None:
            self.backbone.stop()


def start_switchboard(tmp: Path, max_connections: int, edges: int = 1) -> Running:
    """A backbone nats-server and `edges` edges on it (the project's launcher),
    new-connection limits out of the way."""
    backbone = NatsServer(store_dir=str(tmp / "backbone-js"))
    backbone.start()
    procs = [
        EdgeProcess.on(
            backbone,
            f"bench-edge-{i}",
            jwt_secret=SECRET,
            log_path=str(tmp / f"edge-{i}.log"),
            settings={
                "max_connections": max_connections,
                "new_connections_per_s": 1000000,
                "new_connections_burst": 1000000,
                "log_level": "WARNING",  # no line per connection
                "drain_grant_timeout_s": 0.2,  # no operator: SIGTERM drains at once
                "drain_timeout_s": 0,
            },
        )
        for i in range(edges)
    ]
    assert backbone.process is not None
    name = "switchboard" if edges == 1 else f"switchboard-x{edges}"
    ws_url = ",".join(edge.ws_url for edge in procs)
    running = Running(name, "switchboard", ws_url, backbone.url, [], list(procs), backbone)
    try:
        for edge in procs:
            edge.spawn()
        running.pids = [("server", edge.pid) for edge in procs]
        running.pids.append(("backbone", backbone.process.pid))
        for edge in procs:
            edge.wait_ready(60, readyz=True)
    except (RuntimeError, TimeoutError) as exc:
        running.stop()
        raise BenchError(f"the edge did not start: {exc}") from None
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
    proc = LocalProcess([find_binary(), "-c", str(conf)], None, str(tmp / "nats-ws.log"))
    running = Running(
        "nats", "nats", f"ws://127.0.0.1:{ws_port}", f"nats://127.0.0.1:{port}", [], [proc]
    )
    try:
        running.pids = [("server", proc.spawn().pid)]
        wait_http(f"http://127.0.0.1:{http_port}/healthz", proc, "nats-server", 30)
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
    proc = LocalProcess([str(binary), "--config", str(conf)], None, str(tmp / "centrifugo.log"))
    running = Running(
        "centrifugo",
        "centrifugo",
        f"ws://127.0.0.1:{port}/connection/websocket",
        f"http://127.0.0.1:{port}/api",
        [],
        [proc],
    )
    try:
        running.pids = [("server", proc.spawn().pid)]
        wait_http(f"http://127.0.0.1:{port}/health", proc, "centrifugo", 30)
    except BaseException:
        running.stop()
        raise
    return running
