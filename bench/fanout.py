"""Fan-out benchmark: one channel, N WebSocket subscribers, a paced NATS publisher.

Runs the same load twice, one after the other, with the same load generator:

  (a) switchboard  a nats-server (the backbone) + one edge process
                   (`python -m switchboard edge`); clients speak the Switchboard
                   protocol and subscribe to channel `bench`.
  (b) reference    a second nats-server with its own WebSocket listener; clients
                   speak the NATS text protocol and `SUB sb.ch.bench`.

In both cases a nats-py publisher (in this process) publishes M messages of S bytes
to `sb.ch.bench` at a fixed rate. Reported per target: deliveries received by the
clients, delivered messages/s, and the server process's CPU time (utime+stime from
/proc/<pid>/stat, read just before the first publish and after the last delivery)
divided by the deliveries = CPU microseconds per delivery.

The clients run in separate processes (multiprocessing), but on a small machine they
share the cores with the server under test: see bench/README.md.

    python bench/fanout.py [--clients 1000] [--messages 200] [--size 100] [--rate 20]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from switchboard.natsserver import (  # noqa: E402
    NatsServer,
    find_binary,
    free_port,
    wait_for_port,
)

SECRET = "bench-secret-that-is-long-enough-for-hs256"
CHANNEL = "bench"
SUBJECT = "sb.ch.bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SUBSCRIBE = json.dumps(
    {"type": "subscribe", "id": "1", "payload": {"channel": CHANNEL}}, separators=(",", ":")
)


# --------------------------------------------------------------------------- process stats


def proc_times_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    return sum(proc_times_s(pid))


def system_busy_s() -> float:
    """CPU time spent by the whole machine (all cores, all processes), in seconds."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def prom_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


# --------------------------------------------------------------------------- load generator
# Runs in a child process: N asyncio WebSocket clients, counters, and a tiny command
# protocol over a multiprocessing Pipe (ready -> reset -> collect -> close).


@dataclass
class Counters:
    messages: int = 0
    frames: int = 0
    first_recv: float | None = None
    last_recv: float | None = None
    closed_early: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)


async def _sb_client(url: str, token: str, c: Counters, ready: asyncio.Future[None]) -> Any:
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    ws = await connect(
        url,
        subprotocols=[Subprotocol("switchboard.v1"), Subprotocol("bearer." + token)],
        compression=None,
        ping_interval=None,
        open_timeout=60,
        max_size=1 << 24,
    )
    welcome = await ws.recv()
    if '"welcome"' not in welcome:
        raise RuntimeError(f"expected welcome, got {welcome[:200]!r}")
    await ws.send(SUBSCRIBE)
    while True:
        text = await ws.recv()
        assert isinstance(text, str)
        if '"type":"ack"' in text:
            break
        if '"type":"error"' in text:
            raise RuntimeError(f"subscribe refused: {text[:200]!r}")
    ready.set_result(None)
    return ws


async def _sb_reader(ws: Any, c: Counters) -> None:
    from websockets.exceptions import ConnectionClosed

    mono = time.monotonic
    try:
        async for text in ws:
            # events are JSON lines, several per frame when the edge coalesced them
            c.messages += text.count("\n") + 1
            c.frames += 1
            now = mono()
            if c.first_recv is None:
                c.first_recv = now
            c.last_recv = now
    except ConnectionClosed:
        pass
    code = str(ws.close_code)
    c.close_codes[code] = c.close_codes.get(code, 0) + 1


async def _nats_client(url: str, token: str, c: Counters, ready: asyncio.Future[None]) -> Any:
    from websockets.asyncio.client import connect

    ws = await connect(url, compression=None, ping_interval=None, open_timeout=60, max_size=1 << 24)
    await ws.send(b'CONNECT {"verbose":false,"protocol":1}\r\nSUB ' + SUBJECT.encode() + b" 1\r\n")
    await ws.send(b"PING\r\n")
    seen = b""
    while b"PONG\r\n" not in seen:  # INFO first, then PONG once the SUB is registered
        data = await ws.recv()
        seen += data if isinstance(data, bytes) else data.encode()
        if b"-ERR" in seen:
            raise RuntimeError(f"nats refused: {seen[:200]!r}")
    ready.set_result(None)
    return ws


MARK = b"MSG " + SUBJECT.encode() + b" "


async def _nats_reader(ws: Any, c: Counters) -> None:
    from websockets.exceptions import ConnectionClosed

    mono = time.monotonic
    carry = b""
    keep = len(MARK) - 1
    try:
        async for data in ws:
            if isinstance(data, str):
                data = data.encode()
            buf = carry + data  # a MSG line may straddle two WebSocket frames
            c.messages += buf.count(MARK)
            carry = buf[-keep:]
            c.frames += 1
            now = mono()
            if c.first_recv is None:
                c.first_recv = now
            c.last_recv = now
            if b"PING\r\n" in data:  # server keepalive (every 2 min by default)
                await ws.send(b"PONG\r\n")
    except ConnectionClosed:
        pass
    code = str(ws.close_code)
    c.close_codes[code] = c.close_codes.get(code, 0) + 1


async def _loadgen(conn: Any, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    c = Counters()
    mode = spec["mode"]
    opener = _sb_client if mode == "switchboard" else _nats_client
    reader = _sb_reader if mode == "switchboard" else _nats_reader
    tokens: list[str] = []
    if mode == "switchboard":
        from switchboard.tokens import mint_token

        tokens = [
            mint_token(SECRET, f"bench-{spec['index']}-{i}", ttl_s=3600)
            for i in range(spec["clients"])
        ]
    else:
        tokens = [""] * spec["clients"]

    sem = asyncio.Semaphore(spec["connect_concurrency"])
    sockets: list[Any] = []
    readers: list[asyncio.Task[None]] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        async with sem:
            ready: asyncio.Future[None] = loop.create_future()
            try:
                ws = await opener(spec["url"], tokens[i], c, ready)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            sockets.append(ws)
            readers.append(asyncio.create_task(reader(ws, c)))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(spec["clients"])))
    connect_s = time.monotonic() - t0

    def recv() -> Any:
        return loop.run_in_executor(None, conn.recv)

    conn.send(
        (
            "ready",
            {
                "connected": len(sockets),
                "failed": len(errors),
                "errors": sorted(set(errors))[:5],
                "connect_s": connect_s,
            },
        )
    )
    while True:
        cmd = await recv()
        if cmd[0] == "reset":
            c.messages = c.frames = 0
            c.first_recv = c.last_recv = None
            conn.send(("reset_ok", self_cpu_s()))
        elif cmd[0] == "collect":
            _, expected, idle_s, deadline_s = cmd
            start = time.monotonic()
            last_count, last_change = c.messages, start
            while c.messages < expected:
                await asyncio.sleep(0.05)
                now = time.monotonic()
                if c.messages != last_count:
                    last_count, last_change = c.messages, now
                if now - last_change > idle_s or now - start > deadline_s:
                    break
            conn.send(
                (
                    "result",
                    {
                        "messages": c.messages,
                        "frames": c.frames,
                        "first_recv": c.first_recv,
                        "last_recv": c.last_recv,
                        "open": sum(1 for r in readers if not r.done()),
                        "close_codes": dict(c.close_codes),
                        "cpu_s": self_cpu_s(),
                    },
                )
            )
        elif cmd[0] == "close":
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
            for r in readers:
                r.cancel()
            conn.send(("closed", None))
            return


def loadgen_main(conn: Any, spec: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        asyncio.run(_loadgen(conn, spec))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


class LoadGen:
    """The parent's handle on the load-generator processes."""

    def __init__(self, mode: str, url: str, clients: int, procs: int, concurrency: int) -> None:
        ctx = mp.get_context("spawn")
        self.parts: list[tuple[Any, Any]] = []
        share = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        for i, n in enumerate(share):
            parent, child = ctx.Pipe()
            spec = {
                "mode": mode,
                "url": url,
                "clients": n,
                "index": i,
                "connect_concurrency": max(1, concurrency // procs),
            }
            p = ctx.Process(target=loadgen_main, args=(child, spec), daemon=True)
            p.start()
            self.parts.append((p, parent))

    def _ask(self, conn: Any, proc: Any, timeout: float, want: str) -> Any:
        deadline = time.monotonic() + timeout
        while not conn.poll(0.2):
            if not proc.is_alive():
                raise RuntimeError(f"load generator died (exit {proc.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"load generator did not answer '{want}' in {timeout}s")
        kind, value = conn.recv()
        if kind == "error":
            raise RuntimeError(f"load generator failed: {value}")
        if kind != want:
            raise RuntimeError(f"load generator said {kind!r}, expected {want!r}")
        return value

    def wait_ready(self, timeout: float) -> list[dict[str, Any]]:
        return [self._ask(c, p, timeout, "ready") for p, c in self.parts]

    def reset(self) -> float:
        for _, c in self.parts:
            c.send(("reset",))
        return float(sum(self._ask(c, p, 10, "reset_ok") for p, c in self.parts))

    def collect(
        self, expected: list[int], idle_s: float, deadline_s: float
    ) -> list[dict[str, Any]]:
        for (_, c), n in zip(self.parts, expected, strict=True):
            c.send(("collect", n, idle_s, deadline_s))
        return [self._ask(c, p, deadline_s + 10, "result") for p, c in self.parts]

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


# --------------------------------------------------------------------------- servers


class Proc:
    """A child process we started and must stop."""

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

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_edge(nats_url: str, clients: int, tmp: str) -> tuple[Proc, int]:
    port = free_port()
    env = os.environ | {
        "SB_EDGE_HOST": "127.0.0.1",
        "SB_EDGE_PORT": str(port),
        "SB_EDGE_POD_NAME": "bench-edge",
        "SB_EDGE_NATS_URL": nats_url,
        "SB_EDGE_JWT_SECRET": SECRET,
        "SB_EDGE_MAX_CONNECTIONS": str(clients + 100),
        "SB_EDGE_NEW_CONNECTIONS_PER_S": "100000",
        "SB_EDGE_NEW_CONNECTIONS_BURST": str(max(1000, clients * 2)),
        # per-connection "connected"/"disconnected" lines are INFO; keep them out
        "SB_EDGE_LOG_LEVEL": "WARNING",
    }
    edge = Proc([sys.executable, "-m", "switchboard", "edge"], env, os.path.join(tmp, "edge.log"))
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


def start_reference(tmp: str) -> tuple[Proc, int, int, int]:
    port, http_port, ws_port = free_port(), free_port(), free_port()
    conf = os.path.join(tmp, "reference.conf")
    with open(conf, "w") as f:
        f.write(
            f"""
host: 127.0.0.1
port: {port}
http: "127.0.0.1:{http_port}"
max_connections: 100000
websocket {{
  host: 127.0.0.1
  port: {ws_port}
  no_tls: true
  compression: false
}}
"""
        )
    proc = Proc([find_binary(), "-c", conf], None, os.path.join(tmp, "reference-nats.log"))
    for p in (port, http_port, ws_port):
        wait_for_port(p, 15)
    proc.check_alive("reference nats-server")
    return proc, port, http_port, ws_port


# --------------------------------------------------------------------------- one measurement


def make_payload(size: int, seq: int) -> bytes:
    """Valid JSON of exactly `size` bytes (the edge parses backend payloads as JSON)."""
    head = '{"seq":' + str(seq) + ',"pad":"'
    tail = '"}'
    pad = max(0, size - len(head) - len(tail))
    return (head + "x" * pad + tail).encode()


async def publish_paced(
    nats_url: str, messages: int, size: int, rate: float
) -> tuple[float, float]:
    import nats

    nc = await nats.connect(nats_url, name="bench-publisher")
    try:
        payloads = [make_payload(size, i) for i in range(messages)]
        await nc.flush()
        interval = 1.0 / rate
        t0 = time.monotonic()
        for i, payload in enumerate(payloads):
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await nc.publish(SUBJECT, payload)
            if i % 16 == 0:
                await nc.flush()  # keep the pacing on the wire, not in nats-py's buffer
        await nc.flush()
        t1 = time.monotonic()
    finally:
        await nc.close()
    return t0, t1


def measure(
    name: str,
    *,
    loadgen: LoadGen,
    server_pid: int,
    publish_url: str,
    args: argparse.Namespace,
    extra_pids: dict[str, int],
    server_counter: Any,
) -> dict[str, Any]:
    ready = loadgen.wait_ready(timeout=120)
    connected = sum(r["connected"] for r in ready)
    failed = sum(r["failed"] for r in ready)
    errors = sorted({e for r in ready for e in r["errors"]})[:5]
    connect_s = max(r["connect_s"] for r in ready)
    print(
        f"  [{name}] {connected} clients subscribed in {connect_s:.1f}s"
        + (f", {failed} failed: {errors}" if failed else ""),
        flush=True,
    )
    if connected == 0:
        raise RuntimeError(f"{name}: no client could connect: {errors}")
    rss_connected = proc_rss_kib(server_pid)
    time.sleep(1.0)  # let the connect phase settle (GC, pending writes)

    expected = [r["connected"] * args.messages for r in ready]
    lg_cpu0 = loadgen.reset()
    counter0 = server_counter()
    user0, kernel0 = proc_times_s(server_pid)
    extra0 = {k: proc_cpu_s(p) for k, p in extra_pids.items()}
    me0 = self_cpu_s()
    sys0 = system_busy_s()

    t_pub0, t_pub1 = asyncio.run(publish_paced(publish_url, args.messages, args.size, args.rate))
    pub_cpu = self_cpu_s() - me0
    results = loadgen.collect(expected, idle_s=3.0, deadline_s=args.messages / args.rate + 60)

    sys1 = system_busy_s()
    user1, kernel1 = proc_times_s(server_pid)
    extra1 = {k: proc_cpu_s(p) for k, p in extra_pids.items()}
    counter1 = server_counter()
    received = sum(r["messages"] for r in results)
    frames = sum(r["frames"] for r in results)
    lasts = [r["last_recv"] for r in results if r["last_recv"] is not None]
    last_recv = max(lasts) if lasts else t_pub1
    elapsed = max(last_recv - t_pub0, 1e-9)
    user, kernel = user1 - user0, kernel1 - kernel0
    cpu = user + kernel
    loadgen_cpu = sum(r["cpu_s"] for r in results) - lg_cpu0
    extra_cpu = sum(extra1[k] - extra0[k] for k in extra0)
    machine_cpu = sys1 - sys0
    out = {
        "clients_requested": args.clients,
        "clients_connected": connected,
        "clients_failed": failed,
        "connect_errors": errors,
        "connect_s": round(connect_s, 3),
        "messages_published": args.messages,
        "publish_s": round(t_pub1 - t_pub0, 3),
        "deliveries_expected": sum(expected),
        "deliveries_received": received,
        "deliveries_server_counter": counter1 - counter0,
        "ws_frames_received": frames,
        "deliveries_per_frame": round(received / frames, 3) if frames else None,
        "elapsed_s": round(elapsed, 3),
        "drain_after_last_publish_ms": round((last_recv - t_pub1) * 1000, 1),
        "delivered_msgs_per_s": round(received / elapsed, 1),
        "server_pid": server_pid,
        "server_cpu_s": round(cpu, 3),
        "server_cpu_us_per_delivery": round(cpu / received * 1e6, 3) if received else None,
        "server_user_s": round(user, 3),
        "server_kernel_s": round(kernel, 3),
        "server_cpu_share_of_one_core": round(cpu / elapsed, 3),
        "server_rss_kib_with_clients": rss_connected,
        "other_cpu_s": {k: round(extra1[k] - extra0[k], 3) for k in extra0},
        "loadgen_cpu_s": round(loadgen_cpu, 3),
        "publisher_cpu_s": round(pub_cpu, 3),
        # everything the machine did in the window, and what is not ours (other jobs,
        # kernel threads): a large value means the run was disturbed
        "machine_cpu_s": round(machine_cpu, 3),
        "unaccounted_cpu_s": round(machine_cpu - cpu - extra_cpu - loadgen_cpu - pub_cpu, 3),
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "clients_still_open": sum(r["open"] for r in results),
        "client_close_codes": {
            k: sum(r["close_codes"].get(k, 0) for r in results)
            for k in {k for r in results for k in r["close_codes"]}
        },
    }
    print(
        f"  [{name}] {received}/{sum(expected)} deliveries in {elapsed:.2f}s, "
        f"server CPU {cpu:.2f}s",
        flush=True,
    )
    return out


# --------------------------------------------------------------------------- main


def run_switchboard(args: argparse.Namespace, tmp: str, cleanup: list[Any]) -> dict[str, Any]:
    backbone = NatsServer(store_dir=os.path.join(tmp, "js"))
    cleanup.append(backbone.stop)
    backbone.start()
    assert backbone.process is not None
    edge, port = start_edge(backbone.url, args.clients, tmp)
    cleanup.append(edge.stop)
    rss_idle = proc_rss_kib(edge.pid)
    loadgen = LoadGen(
        "switchboard", f"ws://127.0.0.1:{port}/v1/ws", args.clients, args.procs, args.concurrency
    )
    cleanup.append(loadgen.close)

    def counter() -> float:
        return prom_value(http_get(f"http://127.0.0.1:{port}/metrics"), "sb_edge_deliveries_total")

    out = measure(
        "switchboard",
        loadgen=loadgen,
        server_pid=edge.pid,
        publish_url=backbone.url,
        args=args,
        extra_pids={"backbone_nats_server": backbone.process.pid},
        server_counter=counter,
    )
    metrics = http_get(f"http://127.0.0.1:{port}/metrics")
    out["server_rss_kib_idle"] = rss_idle
    out["slow_consumer_evictions"] = prom_value(metrics, "sb_edge_slow_consumer_evictions_total")
    edge.check_alive("edge")
    loadgen.close()
    edge.stop()
    backbone.stop()
    return out


def run_reference(args: argparse.Namespace, tmp: str, cleanup: list[Any]) -> dict[str, Any]:
    ref, port, http_port, ws_port = start_reference(tmp)
    cleanup.append(ref.stop)
    rss_idle = proc_rss_kib(ref.pid)
    loadgen = LoadGen(
        "nats", f"ws://127.0.0.1:{ws_port}", args.clients, args.procs, args.concurrency
    )
    cleanup.append(loadgen.close)

    def varz() -> dict[str, Any]:
        return dict(json.loads(http_get(f"http://127.0.0.1:{http_port}/varz")))

    out = measure(
        "nats-server ws",
        loadgen=loadgen,
        server_pid=ref.pid,
        publish_url=f"nats://127.0.0.1:{port}",
        args=args,
        extra_pids={},
        server_counter=lambda: float(varz()["out_msgs"]),
    )
    out["server_rss_kib_idle"] = rss_idle
    out["slow_consumers"] = varz().get("slow_consumers")
    ref.check_alive("reference nats-server")
    loadgen.close()
    ref.stop()
    return out


def nats_server_version() -> str:
    try:
        return subprocess.run(
            [find_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception as exc:
        return f"unknown ({exc})"


def source_state() -> dict[str, Any]:
    """Which code was measured: HEAD and uncommitted changes (read-only git calls)."""

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout
        except Exception:
            return ""

    dirty = git("status", "--porcelain", "--", "edge", "switchboard", "pyproject.toml")
    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "uncommitted_changes": [line[3:] for line in dirty.splitlines()],
        "otel_env": sorted(k for k in os.environ if k.startswith("OTEL_")),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(sb: dict[str, Any], ref: dict[str, Any], ratios: dict[str, Any]) -> None:
    rows = [
        ("clients connected", "clients_connected"),
        ("deliveries expected", "deliveries_expected"),
        ("deliveries received", "deliveries_received"),
        ("  server-side counter", "deliveries_server_counter"),
        ("deliveries per WS frame", "deliveries_per_frame"),
        ("elapsed (first publish -> last recv) s", "elapsed_s"),
        ("drain after last publish ms", "drain_after_last_publish_ms"),
        ("delivered msgs/s", "delivered_msgs_per_s"),
        ("server CPU s", "server_cpu_s"),
        ("  user s", "server_user_s"),
        ("  kernel (sys) s", "server_kernel_s"),
        ("server CPU us / delivery", "server_cpu_us_per_delivery"),
        ("server CPU (cores busy)", "server_cpu_share_of_one_core"),
        ("server RSS idle KiB", "server_rss_kib_idle"),
        ("server RSS with clients KiB", "server_rss_kib_with_clients"),
        ("load generator CPU s", "loadgen_cpu_s"),
        ("publisher CPU s", "publisher_cpu_s"),
        ("whole machine CPU s (window)", "machine_cpu_s"),
        ("  of which not ours s", "unaccounted_cpu_s"),
    ]
    w = max(len(r[0]) for r in rows) + 2
    print()
    print(f"{'':<{w}}{'switchboard':>14}{'nats-server ws':>16}")
    for label, key in rows:
        print(f"{label:<{w}}{fmt(sb.get(key)):>14}{fmt(ref.get(key)):>16}")
    print(
        f"{'backbone nats-server CPU s (sb only)':<{w}}"
        f"{fmt(sb['other_cpu_s'].get('backbone_nats_server')):>14}{'-':>16}"
    )
    print()
    print("ratios switchboard / reference:")
    print(f"  delivered msgs/s        {fmt(ratios['delivered_msgs_per_s'])}")
    print(f"  CPU us per delivery     {fmt(ratios['server_cpu_us_per_delivery'])}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket subscribers")
    parser.add_argument("--messages", type=int, default=200, help="messages published per target")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (JSON)")
    parser.add_argument("--rate", type=float, default=20.0, help="published messages per second")
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=100, help="concurrent handshakes")
    parser.add_argument(
        "--only", choices=["switchboard", "reference"], help="measure one target only"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="JSON directory")
    args = parser.parse_args(argv)

    # Ctrl-C / SIGTERM -> normal unwinding, so the finally below stops every process
    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # also when started in the background (SIG_IGN)

    started = dt.datetime.now(dt.UTC)
    source = source_state()  # before the edge starts: the code it will import
    cleanup: list[Any] = []
    results: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="sb-bench-")
    try:
        print(
            f"fan-out: {args.clients} clients, {args.messages} msgs x {args.size} B "
            f"at {args.rate:g}/s, {args.procs} load-generator process(es), {os.cpu_count()} CPUs",
            flush=True,
        )
        if args.only != "reference":
            results["switchboard"] = run_switchboard(args, tmp, cleanup)
        if args.only != "switchboard":
            results["reference"] = run_reference(args, tmp, cleanup)
    except KeyboardInterrupt:
        print(f"interrupted (logs kept in {tmp})", file=sys.stderr)
        return 130
    except BaseException:
        print(f"benchmark failed (logs kept in {tmp})", file=sys.stderr)
        raise
    finally:
        for fn in reversed(cleanup):
            with contextlib.suppress(Exception):
                fn()

    sb, ref = results.get("switchboard"), results.get("reference")
    ratios: dict[str, Any] = {}
    if sb and ref:
        ratios = {
            "delivered_msgs_per_s": ratio(sb["delivered_msgs_per_s"], ref["delivered_msgs_per_s"]),
            "server_cpu_us_per_delivery": ratio(
                sb["server_cpu_us_per_delivery"], ref["server_cpu_us_per_delivery"]
            ),
        }
        print_table(sb, ref, ratios)
    else:
        print(json.dumps(results, indent=2))

    report = {
        "benchmark": "fanout",
        "started_utc": started.isoformat(timespec="seconds"),
        "params": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nats_server": nats_server_version(),
        },
        "source": source,
        "results": results,
        "ratios_switchboard_over_reference": ratios,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"fanout-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
