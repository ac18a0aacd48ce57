"""Shared pieces of the benchmarks in bench/ (fanout, idle_memory, handshakes, latency).

Servers under test:

  switchboard  a nats-server (the backbone, JetStream on) + one edge process
               (`python -m switchboard edge`, configured by SB_EDGE_* variables).
  reference    a second nats-server with its own WebSocket listener
               (`websocket { listen: "127.0.0.1:PORT", no_tls: true }`); clients speak
               the NATS text protocol over WebSocket.

Load generators run in separate processes (multiprocessing, spawn) and talk to the
parent over a Pipe: the child sends ("ready", info) once, then answers each command
(a tuple whose first item is its name) with one reply; ("close",) ends it. On this
kind of machine they share the cores with the server under test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from switchboard.cli.natsserver import (  # noqa: E402
    NatsServer,
    find_binary,
    free_port,
    wait_for_port,
)

SECRET = "bench-secret-that-is-long-enough-for-hs256"
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOADGEN_NOTE = (
    "load generators are separate processes on the same machine: they share the "
    f"{os.cpu_count()} cores with the server under test"
)


# --------------------------------------------------------------------------- limits


def raise_nofile(want: int = 1 << 20) -> int:
    """Raise RLIMIT_NOFILE's soft limit as far as allowed; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return int(soft) if soft != resource.RLIM_INFINITY else want
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


# --------------------------------------------------------------------------- process stats


def proc_times_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    return sum(proc_times_s(pid))


def proc_rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def system_busy_s() -> float:
    """CPU time the whole machine spent busy (all cores, all processes), seconds."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def system_softirq_s() -> float:
    """Machine-wide softirq time (loopback packet processing lands here), seconds."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    return (int(parts[6]) + int(parts[7])) / CLK_TCK  # irq + softirq


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores the machine kept busy over the last `seconds` (before we start)."""
    b0 = system_busy_s()
    time.sleep(seconds)
    return round((system_busy_s() - b0) / seconds, 2)


def wait_quiet(max_busy: float = 0.3, max_wait_s: float = 30.0) -> float:
    """Wait (up to `max_wait_s`) for the machine to be nearly idle; the last busy figure.

    Other jobs on a small machine (a test run, another benchmark) skew every number here.
    """
    deadline = time.monotonic() + max_wait_s
    busy = busy_cores(1.0)
    while busy > max_busy and time.monotonic() < deadline:
        busy = busy_cores(1.0)
    return busy


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds used since a `CpuMeter` started, and the wall time since then."""

    user: float  # the server under test
    kernel: float
    extra: dict[str, float]  # other processes of the run, by name (e.g. the backbone)
    machine: float  # the whole machine (all cores, all processes)
    softirq: float  # machine-wide irq + softirq
    wall: float

    @property
    def server(self) -> float:
        return self.user + self.kernel

    @property
    def extra_total(self) -> float:
        return sum(self.extra.values())

    def machine_cores(self, loadgen_cores: float) -> dict[str, float]:
        """Where the machine's CPU went in the window, in cores (JSON fields; MACHINE_ROWS)."""
        return {
            "machine_busy_cores": round(self.machine / self.wall, 3),
            # loopback TCP work is mostly irq/softirq time, charged to no process
            "irq_softirq_cores": round(self.softirq / self.wall, 3),
            # CPU used in the window by processes that are not part of this run
            "other_processes_cores": round(
                (self.machine - self.softirq - self.server - self.extra_total) / self.wall
                - loadgen_cores,
                3,
            ),
        }


class CpuMeter:
    """CPU of the server under test, other processes of the run and the whole machine."""

    def __init__(self, pid: int, extra_pids: dict[str, int]) -> None:
        self.pid = pid
        self.extra_pids = extra_pids
        self.start = self._sample()

    def _sample(self) -> tuple[tuple[float, float], dict[str, float], float, float, float]:
        return (
            proc_times_s(self.pid),
            {k: proc_cpu_s(p) for k, p in self.extra_pids.items()},
            system_busy_s(),
            system_softirq_s(),
            time.monotonic(),
        )

    def read(self) -> CpuUse:
        (u0, k0), extra0, busy0, irq0, t0 = self.start
        (u1, k1), extra1, busy1, irq1, t1 = self._sample()
        return CpuUse(
            user=u1 - u0,
            kernel=k1 - k0,
            extra={k: extra1[k] - extra0[k] for k in extra0},
            machine=busy1 - busy0,
            softirq=irq1 - irq0,
            wall=max(t1 - t0, 1e-9),
        )


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def prom_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


# --------------------------------------------------------------------------- servers


class Proc:
    """A child process we started and must stop (output to a log file)."""

    def __init__(self, args: list[str], env: dict[str, str] | None, log_path: str) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(args, env=env, stdout=log, stderr=log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self, what: str) -> None:
        if self.popen.poll() is not None:
            tail = Path(self.log_path).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{what} exited with {self.popen.returncode}:\n{tail}")

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_backbone(tmp: str, cleanup: list[Callable[[], None]]) -> NatsServer:
    backbone = NatsServer(store_dir=os.path.join(tmp, "js"))
    cleanup.append(backbone.stop)
    backbone.start()
    return backbone


def start_edge(
    nats_url: str,
    tmp: str,
    cleanup: list[Callable[[], None]],
    *,
    max_connections: int,
    extra_env: dict[str, str] | None = None,
) -> tuple[Proc, int]:
    """One edge process; upgrade rate limits and the connection cap out of the way."""
    port = free_port()
    env = os.environ | {
        "SB_EDGE_HOST": "127.0.0.1",
        "SB_EDGE_PORT": str(port),
        "SB_EDGE_ADMIN_PORT": "0",
        "SB_EDGE_POD_NAME": "bench-edge",
        "SB_EDGE_NATS_URL": nats_url,
        "SB_EDGE_JWT_SECRET": SECRET,
        "SB_EDGE_MAX_CONNECTIONS": str(max_connections),
        "SB_EDGE_NEW_CONNECTIONS_PER_S": "1000000",
        "SB_EDGE_NEW_CONNECTIONS_BURST": "1000000",
        # per-connection "connected"/"disconnected" lines are INFO: keep them out
        "SB_EDGE_LOG_LEVEL": "WARNING",
        # SIGTERM drains; no operator here, so do not wait on one or pace the drain
        "SB_EDGE_DRAIN_GRANT_TIMEOUT_S": "0.2",
        "SB_EDGE_DRAIN_TIMEOUT_S": "0",
    }
    env |= extra_env or {}
    edge = Proc([sys.executable, "-m", "switchboard", "edge"], env, os.path.join(tmp, "edge.log"))
    cleanup.append(edge.stop)
    wait_for_port(port, 30)
    deadline = time.monotonic() + 30
    while True:
        edge.check_alive("edge")
        with contextlib.suppress(OSError):
            if http_get(f"http://127.0.0.1:{port}/readyz").startswith("ready"):
                break
        if time.monotonic() > deadline:
            raise TimeoutError("edge not ready in 30s")
        time.sleep(0.1)
    return edge, port


def edge_metrics(port: int) -> str:
    return http_get(f"http://127.0.0.1:{port}/metrics")


class Switchboard:
    """The Switchboard target: a backbone nats-server and one edge process."""

    name = "switchboard"  # in progress lines
    mode = "switchboard"  # the load generators' client protocol

    def __init__(self, backbone: NatsServer, edge: Proc, port: int) -> None:
        self.backbone = backbone
        self.edge = edge
        self.port = port

    @property
    def pid(self) -> int:
        return self.edge.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

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
        return edge_metrics(self.port)

    def slow_consumers(self) -> dict[str, float]:
        """Clients dropped for not keeping up, so far (JSON field: its value)."""
        total = prom_value(self.metrics(), "sb_edge_slow_consumer_evictions_total")
        return {"slow_consumer_evictions": total}

    def check_and_stop(self, cleanup: list[Callable[[], None]]) -> None:
        """Fail if the edge died during the measurement, then stop both processes now."""
        self.edge.check_alive("edge")
        run_step(cleanup, self.edge.stop)
        run_step(cleanup, self.backbone.stop)


def start_switchboard(
    tmp: str, cleanup: list[Callable[[], None]], *, max_connections: int
) -> Switchboard:
    backbone = start_backbone(tmp, cleanup)
    edge, port = start_edge(backbone.url, tmp, cleanup, max_connections=max_connections)
    return Switchboard(backbone, edge, port)


class Reference:
    """nats-server with its own WebSocket listener (the reference)."""

    name = "nats-server ws"
    mode = "nats"

    def __init__(self, proc: Proc, port: int, http_port: int, ws_port: int) -> None:
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

    def check_and_stop(self, cleanup: list[Callable[[], None]]) -> None:
        """Fail if the server died during the measurement, then stop it now."""
        self.proc.check_alive("reference nats-server")
        run_step(cleanup, self.proc.stop)


Target = Switchboard | Reference


def start_reference(tmp: str, cleanup: list[Callable[[], None]]) -> Reference:
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
    proc = Proc([find_binary(), "-c", conf], None, os.path.join(tmp, "reference-nats.log"))
    cleanup.append(proc.stop)
    for p in (port, http_port, ws_port):
        wait_for_port(p, 15)
    proc.check_alive("reference nats-server")
    return Reference(proc, port, http_port, ws_port)


def nats_server_version() -> str:
    try:
        return subprocess.run(
            [find_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception as exc:
        return f"unknown ({exc})"


def machine_info(keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """What the run ran on; only `keys` (in this order) when given."""
    import websockets

    info = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "websockets": websockets.__version__,
        "platform": platform.platform(),
        "nats_server": nats_server_version(),
        "nofile_soft_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }
    return info if keys is None else {k: info[k] for k in keys}


# --------------------------------------------------------------------------- clients


def mint_token(subject: str) -> str:
    from switchboard.contract.tokens import mint_token as mint

    return mint(SECRET, subject, ttl_s=3600)


def mint_tokens(prefix: str, index: int, count: int) -> list[str]:
    """`count` tokens of distinct users `<prefix>-<index>-<i>` (index: the worker's)."""
    return [mint_token(f"{prefix}-{index}-{i}") for i in range(count)]


def sb_subprotocols(token: str) -> list[Any]:
    from websockets.typing import Subprotocol

    return [Subprotocol("switchboard.v1"), Subprotocol("bearer." + token)]


def subscribe_frame(channel: str, request_id: str = "1") -> str:
    return json.dumps(
        {"type": "subscribe", "id": request_id, "payload": {"channel": channel}},
        separators=(",", ":"),
    )


async def sb_open(url: str, token: str, *, open_timeout: float = 60) -> Any:
    """A Switchboard connection, returned once `welcome` has arrived."""
    from websockets.asyncio.client import connect

    ws = await connect(
        url,
        subprotocols=sb_subprotocols(token),
        compression=None,
        ping_interval=None,
        open_timeout=open_timeout,
        max_size=1 << 24,
    )
    try:
        welcome = await ws.recv()
        if '"welcome"' not in welcome:
            raise RuntimeError(f"expected welcome, got {str(welcome)[:200]!r}")
    except BaseException:
        ws.transport.abort()
        raise
    return ws


async def sb_subscribe(ws: Any, channel: str) -> None:
    await ws.send(subscribe_frame(channel))
    while True:
        text = await ws.recv()
        if '"type":"ack"' in text:
            return
        if '"type":"error"' in text:
            raise RuntimeError(f"subscribe refused: {text[:200]!r}")


async def nats_ws_open(url: str, *, subject: str | None, open_timeout: float = 60) -> Any:
    """A NATS-over-WebSocket connection: CONNECT (+ SUB) + PING, returned at PONG."""
    from websockets.asyncio.client import connect

    ws = await connect(
        url, compression=None, ping_interval=None, open_timeout=open_timeout, max_size=1 << 24
    )
    out = b'CONNECT {"verbose":false,"protocol":1}\r\n'
    if subject is not None:
        out += b"SUB " + subject.encode() + b" 1\r\n"
    try:
        await ws.send(out + b"PING\r\n")
        seen = b""
        while b"PONG\r\n" not in seen:  # INFO first, then PONG once CONNECT/SUB are done
            data = await ws.recv()
            seen += data if isinstance(data, bytes) else data.encode()
            if b"-ERR" in seen:
                raise RuntimeError(f"nats refused: {seen[:200]!r}")
    except BaseException:
        ws.transport.abort()
        raise
    return ws


async def open_subscriber(mode: str, url: str, token: str, channel: str, subject: str) -> Any:
    """A subscribed client: Switchboard (`channel`) or NATS over WebSocket (`subject`)."""
    if mode != "switchboard":
        return await nats_ws_open(url, subject=subject)
    ws = await sb_open(url, token)
    try:
        await sb_subscribe(ws, channel)
    except BaseException:
        ws.transport.abort()
        raise
    return ws


async def open_clients(
    conn: Any,
    spec: dict[str, Any],
    tokens: list[str] | None,
    channel: str,
    subject: str,
    reader: Callable[[Any], Coroutine[Any, Any, None]] | None = None,
) -> tuple[list[Any], list[asyncio.Task[None]]]:
    """Open spec["clients"] subscribers, spec["concurrency"] handshakes at a time.

    A task `reader(ws)` is started for each one as it is ready. Then the worker's
    ("ready", info) goes to the parent (see `report_ready`): connected = the clients
    still open by then (without a reader, close_code is set on EOF). (sockets, readers)
    """
    sem = asyncio.Semaphore(spec["concurrency"])
    sockets: list[Any] = []
    readers: list[asyncio.Task[None]] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        async with sem:
            token = tokens[i] if tokens else ""
            try:
                ws = await open_subscriber(spec["mode"], spec["url"], token, channel, subject)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            sockets.append(ws)
            if reader is not None:
                readers.append(asyncio.create_task(reader(ws)))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(spec["clients"])))
    info = {
        "connected": sum(1 for ws in sockets if ws.close_code is None),
        "failed": len(errors),
        "errors": sorted(set(errors))[:5],
        "connect_s": time.monotonic() - t0,
    }
    conn.send(("ready", info))
    return sockets, readers


def report_ready(
    name: str, ready: list[dict[str, Any]], what: str
) -> tuple[int, int, list[str], float]:
    """Sum the workers' "ready" infos (`open_clients`), print one line.

    (connected, failed, errors, seconds)
    """
    connected = sum(r["connected"] for r in ready)
    failed = sum(r["failed"] for r in ready)
    errors = sorted({e for r in ready for e in r["errors"]})[:5]
    connect_s = max(r["connect_s"] for r in ready)
    print(
        f"  [{name}] {connected} {what} in {connect_s:.1f}s"
        + (f", {failed} failed: {errors}" if failed else ""),
        flush=True,
    )
    return connected, failed, errors, connect_s


async def connect_publisher(url: str, name: str) -> Any:
    """A nats-py connection (in the parent process), connected and flushed."""
    import nats

    nc = await nats.connect(url, name=name)
    await nc.flush()
    return nc


def abort_all(sockets: list[Any]) -> None:
    """Drop connections at once (no closing handshake): fast teardown of many clients."""
    for ws in sockets:
        with contextlib.suppress(Exception):
            ws.transport.abort()


# --------------------------------------------------------------------------- workers


def _worker_entry(target: Callable[[Any, dict[str, Any]], Any], conn: Any, spec: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    raise_nofile()
    try:
        asyncio.run(target(conn, spec))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


async def pipe_recv(conn: Any) -> Any:
    """Await the next command from the parent without blocking the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, conn.recv)


class Workers:
    """Load-generator processes running `target(conn, spec)` (an async function)."""

    def __init__(self, target: Callable[[Any, dict[str, Any]], Any], specs: list[Any]) -> None:
        ctx = mp.get_context("spawn")
        self.parts: list[tuple[Any, Any]] = []
        for spec in specs:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_entry, args=(target, child, spec), daemon=True)
            p.start()
            self.parts.append((p, parent))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.parts if p.pid is not None]

    def _answer(self, proc: Any, conn: Any, timeout: float, want: str) -> Any:
        deadline = time.monotonic() + timeout
        while not conn.poll(0.1):
            if not proc.is_alive():
                raise RuntimeError(f"load generator died (exit {proc.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"load generator did not answer {want!r} in {timeout}s")
        kind, value = conn.recv()
        if kind == "error":
            raise RuntimeError(f"load generator failed: {value}")
        if kind != want:
            raise RuntimeError(f"load generator said {kind!r}, expected {want!r}")
        return value

    def wait(self, want: str, timeout: float) -> list[Any]:
        """One reply `want` from every worker (their replies may come in any order)."""
        return [self._answer(p, c, timeout, want) for p, c in self.parts]

    def send(self, *cmd: Any) -> None:
        for _, c in self.parts:
            c.send(cmd)

    def ask(self, cmd: tuple[Any, ...], want: str, timeout: float) -> list[Any]:
        self.send(*cmd)
        return self.wait(want, timeout)

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += proc_cpu_s(pid)
        return total

    def close(self) -> None:
        for p, c in self.parts:
            if p.is_alive():
                with contextlib.suppress(Exception):
                    c.send(("close",))
        for p, c in self.parts:
            with contextlib.suppress(Exception):
                if c.poll(15):
                    c.recv()
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        self.parts = []


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def client_specs(
    target: Target, clients: int, procs: int, concurrency: int = 1, **extra: Any
) -> list[dict[str, Any]]:
    """One worker spec per process: `clients` spread over `procs`, for `open_clients`."""
    return [
        {
            "mode": target.mode,
            "url": target.ws_url,
            "clients": n,
            "index": i,
            "concurrency": concurrency,
            **extra,
        }
        for i, n in enumerate(split(clients, procs))
    ]


def start_workers(
    target: Callable[[Any, dict[str, Any]], Any],
    specs: list[Any],
    cleanup: list[Callable[[], None]],
) -> Workers:
    workers = Workers(target, specs)
    cleanup.append(workers.close)
    return workers


def percentile(sorted_values: Any, q: float) -> Any:
    """The q-th percentile (nearest rank) of an ascending sequence; None if it is empty."""
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


# --------------------------------------------------------------------------- running


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph, defaults shown in --help."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def parse_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, *, quiet_wait: float | None = None
) -> argparse.Namespace:
    """Add the options every script ends with ([--quiet-wait], --only, --out) and parse."""
    if quiet_wait is not None:
        parser.add_argument(
            "--quiet-wait", type=float, default=quiet_wait, help="max s to wait for an idle machine"
        )
    parser.add_argument(
        "--only", choices=["switchboard", "reference"], help="measure one target only"
    )
    parser.add_argument("--out", default=str(RESULTS), help="JSON directory")
    return parser.parse_args(argv)


MeasureTarget = Callable[[Target, argparse.Namespace, list[Callable[[], None]]], dict[str, Any]]


def run_targets(
    name: str,
    args: argparse.Namespace,
    banner: str,
    measure: MeasureTarget,
    *,
    max_connections: int,
    pause_s: float = 0.0,
) -> dict[str, Any]:
    """Print `banner`, then start, measure and stop switchboard and the reference in turn.

    `measure(target, args, cleanup)` gives a target's results; --only picks one target;
    `pause_s` between the two. Results by target ("switchboard", "reference").
    """
    results: dict[str, Any] = {}
    with bench_run(name) as (tmp, cleanup):
        print(banner, flush=True)
        if args.only != "reference":
            sb = start_switchboard(tmp, cleanup, max_connections=max_connections)
            results["switchboard"] = measure(sb, args, cleanup)
            sb.check_and_stop(cleanup)
        if args.only is None and pause_s:
            time.sleep(pause_s)  # let the machine settle
        if args.only != "switchboard":
            ref = start_reference(tmp, cleanup)
            results["reference"] = measure(ref, args, cleanup)
            ref.check_and_stop(cleanup)
    return results


@contextlib.contextmanager
def bench_run(name: str) -> Iterator[tuple[str, list[Callable[[], None]]]]:
    """A temp dir and a cleanup list run in reverse on exit, Ctrl-C or SIGTERM."""

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # also when started in the background (SIG_IGN)
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix=f"sb-bench-{name}-")
    cleanup: list[Callable[[], None]] = []
    ok = False
    try:
        yield tmp, cleanup
        ok = True
    except KeyboardInterrupt:
        print(f"interrupted (logs kept in {tmp})", file=sys.stderr)
        raise
    except BaseException:
        print(f"benchmark failed (logs kept in {tmp})", file=sys.stderr)
        raise
    finally:
        for fn in reversed(cleanup):
            with contextlib.suppress(Exception):
                fn()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)


def run_main(main: Callable[[], int]) -> int:
    """Exit code of `main()`; 130 on Ctrl-C/SIGTERM (cleanup already ran)."""
    try:
        return main()
    except KeyboardInterrupt:
        return 130


def run_step(cleanup: list[Callable[[], None]], fn: Callable[[], None]) -> None:
    """Run a cleanup function now and drop it from the list."""
    with contextlib.suppress(ValueError):
        cleanup.remove(fn)
    fn()


def ratio(a: float | None, b: float | None, ndigits: int = 3) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, ndigits)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# print_table rows of the `CpuUse.machine_cores` fields (and the load generator's cores)
MACHINE_ROWS = [
    ("load generator CPU (cores)", "loadgen_cpu_cores", True),
    ("whole machine busy (cores)", "machine_busy_cores", True),
    ("  of which irq+softirq (loopback TCP)", "irq_softirq_cores", False),
    ("  of which other processes", "other_processes_cores", False),
]


def keyed_rows(
    sb: dict[str, Any], ref: dict[str, Any], spec: list[tuple[str, str, bool]]
) -> list[tuple[str, Any, Any, bool]]:
    """(label, key, show ratio) -> print_table rows, the values looked up by key."""
    return [(label, sb.get(key), ref.get(key), show) for label, key, show in spec]


def print_table(
    title: str | None,
    rows: list[tuple[str, Any, Any, bool]],
    headers: tuple[str, str] = ("switchboard", "nats-server ws"),
    *,
    widths: tuple[int, int] = (16, 16),
    ratios: bool = True,
) -> None:
    """rows: (label, switchboard value, reference value, show the ratio).

    Without `ratios` there is no "sb / ref" column (and the flags are not read).
    """
    w = max(len(r[0]) for r in rows) + 2
    wa, wb = widths
    print()
    if title is not None:
        print(title)
    print(
        f"{'':<{w}}{headers[0]:>{wa}}{headers[1]:>{wb}}" + (f"{'sb / ref':>10}" if ratios else "")
    )
    for label, a, b, show_ratio in rows:
        line = f"{label:<{w}}{fmt(a):>{wa}}{fmt(b):>{wb}}"
        if ratios:
            r = ratio(a, b) if show_ratio and isinstance(a, int | float) else None
            line += f"{fmt(r) if show_ratio else '':>10}"
        print(line)
    print()


def save_report(
    name: str, started: dt.datetime, report: dict[str, Any], out: str, *, header: bool = True
) -> Path:
    """Write `<out>/<name>-<started>.json` and print where it went.

    With `header`, the machine and the load-generator note go ahead of `report` (and
    the note is printed first); without, `report` brings its own.
    """
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    full: dict[str, Any] = {
        "benchmark": name,
        "started_utc": started.isoformat(timespec="seconds"),
    }
    if header:
        print(f"note: {LOADGEN_NOTE}")
        full |= {"machine": machine_info(), "note": LOADGEN_NOTE}
    path.write_text(json.dumps(full | report, indent=2) + "\n")
    print(f"results: {path}")
    return path


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
