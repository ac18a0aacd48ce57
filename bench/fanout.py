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
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _common as c

from switchboard.contract.channels import channel_subject

CHANNEL = "bench"
SUBJECT = channel_subject(c.PREFIX, CHANNEL)
MARK = b"MSG " + SUBJECT.encode() + b" "
# what the fan-out report has always recorded about the machine (a subset of the others')
MACHINE_KEYS = ("cpus", "python", "platform", "nats_server")


# --------------------------------------------------------------------------- load generator
# Runs in a child process (c.Workers): N asyncio WebSocket clients, counters, and a tiny
# command protocol over the Pipe (ready -> reset -> collect -> close).


@dataclass
class Counters:
    messages: int = 0
    frames: int = 0
    first_recv: float | None = None
    last_recv: float | None = None
    closed_early: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)


async def _sb_reader(ws: Any, n: Counters) -> None:
    from websockets.exceptions import ConnectionClosed

    mono = time.monotonic
    try:
        async for text in ws:
            # events are JSON lines, several per frame when the edge coalesced them
            n.messages += text.count("\n") + 1
            n.frames += 1
            now = mono()
            if n.first_recv is None:
                n.first_recv = now
            n.last_recv = now
    except ConnectionClosed:
        pass
    code = str(ws.close_code)
    n.close_codes[code] = n.close_codes.get(code, 0) + 1


async def _nats_reader(ws: Any, n: Counters) -> None:
    from websockets.exceptions import ConnectionClosed

    mono = time.monotonic
    carry = b""
    keep = len(MARK) - 1
    try:
        async for data in ws:
            if isinstance(data, str):
                data = data.encode()
            buf = carry + data  # a MSG line may straddle two WebSocket frames
            n.messages += buf.count(MARK)
            carry = buf[-keep:]
            n.frames += 1
            now = mono()
            if n.first_recv is None:
                n.first_recv = now
            n.last_recv = now
            if b"PING\r\n" in data:  # server keepalive (every 2 min by default)
                await ws.send(b"PONG\r\n")
    except ConnectionClosed:
        pass
    code = str(ws.close_code)
    n.close_codes[code] = n.close_codes.get(code, 0) + 1


async def worker(conn: Any, spec: dict[str, Any]) -> None:
    counters = Counters()
    sb = spec["mode"] == "switchboard"
    reader = _sb_reader if sb else _nats_reader
    tokens = c.mint_tokens("bench", spec["index"], spec["clients"]) if sb else None
    sockets, readers = await c.open_clients(
        conn, spec, tokens, CHANNEL, SUBJECT, lambda ws: reader(ws, counters)
    )
    while True:
        cmd = await c.pipe_recv(conn)
        if cmd[0] == "reset":
            counters.messages = counters.frames = 0
            counters.first_recv = counters.last_recv = None
            conn.send(("reset_ok", c.self_cpu_s()))
        elif cmd[0] == "collect":
            _, messages, idle_s, deadline_s = cmd
            expected = messages * len(sockets)
            start = time.monotonic()
            last_count, last_change = counters.messages, start
            while counters.messages < expected:
                await asyncio.sleep(0.05)
                now = time.monotonic()
                if counters.messages != last_count:
                    last_count, last_change = counters.messages, now
                if now - last_change > idle_s or now - start > deadline_s:
                    break
            conn.send(
                (
                    "result",
                    {
                        "messages": counters.messages,
                        "frames": counters.frames,
                        "first_recv": counters.first_recv,
                        "last_recv": counters.last_recv,
                        "open": sum(1 for r in readers if not r.done()),
                        "close_codes": dict(counters.close_codes),
                        "cpu_s": c.self_cpu_s(),
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


# --------------------------------------------------------------------------- one measurement


def make_payload(size: int, seq: int) -> bytes:
    """Valid JSON of exactly `size` bytes (the edge parses backend payloads as JSON)."""
    head = '{"seq":' + str(seq) + ',"pad":"'
    tail = '"}'
    pad = max(0, size - len(head) - len(tail))
    return (head + "x" * pad + tail).encode()


def stamp_headers() -> dict[str, str]:
    """What an edge puts on a client's publish: its time in ms and in µs (the µs one
    feeds the edge's publish→deliver latency histogram)."""
    now_us = time.time_ns() // 1000
    return {"Sb-Ts": str(now_us // 1000), "Sb-Ts-Us": str(now_us)}


async def publish_paced(
    nats_url: str, messages: int, size: int, rate: float, stamp: bool = False
) -> tuple[float, float]:
    payloads = [make_payload(size, i) for i in range(messages)]
    nc = await c.connect_publisher(nats_url, "bench-publisher")
    try:
        interval = 1.0 / rate
        t0 = time.monotonic()
        for i, payload in enumerate(payloads):
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await nc.publish(SUBJECT, payload, headers=stamp_headers() if stamp else None)
            if i % 16 == 0:
                await nc.flush()  # keep the pacing on the wire, not in nats-py's buffer
        await nc.flush()
        t1 = time.monotonic()
    finally:
        await nc.close()
    return t0, t1


def server_deliveries(target: c.Target) -> float:
    """The server's own count of messages it sent to clients."""
    if isinstance(target, c.Switchboard):
        return c.prom_value(target.metrics(), "sb_edge_deliveries_total")
    return float(target.varz()["out_msgs"])


def measure(
    target: c.Target, args: argparse.Namespace, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    """Clients connect (server RSS before that: `server_rss_kib_idle`), then M messages."""
    name, server_pid = target.name, target.pid
    rss_idle = c.proc_rss_kib(server_pid)
    concurrency = max(1, args.concurrency // args.procs)
    specs = c.client_specs(target, args.clients, args.procs, concurrency)
    loadgen = c.start_workers(worker, specs, cleanup)
    ready = loadgen.wait("ready", timeout=120)
    connected, failed, errors, connect_s = c.report_ready(name, ready, "clients subscribed")
    if connected == 0:
        raise RuntimeError(f"{name}: no client could connect: {errors}")
    rss_connected = c.proc_rss_kib(server_pid)
    time.sleep(1.0)  # let the connect phase settle (GC, pending writes)

    expected = connected * args.messages
    lg_cpu0 = float(sum(loadgen.ask(("reset",), "reset_ok", 10)))
    counter0 = server_deliveries(target)
    meter = c.CpuMeter(server_pid, target.extra_pids)
    me0 = c.self_cpu_s()

    t_pub0, t_pub1 = asyncio.run(
        publish_paced(target.nats_url, args.messages, args.size, args.rate, args.stamp)
    )
    pub_cpu = c.self_cpu_s() - me0
    deadline_s = args.messages / args.rate + 60
    results = loadgen.ask(("collect", args.messages, 3.0, deadline_s), "result", deadline_s + 10)

    use = meter.read()
    counter1 = server_deliveries(target)
    received = sum(r["messages"] for r in results)
    frames = sum(r["frames"] for r in results)
    lasts = [r["last_recv"] for r in results if r["last_recv"] is not None]
    last_recv = max(lasts) if lasts else t_pub1
    elapsed = max(last_recv - t_pub0, 1e-9)
    cpu = use.server
    loadgen_cpu = sum(r["cpu_s"] for r in results) - lg_cpu0
    out = {
        "clients_requested": args.clients,
        "clients_connected": connected,
        "clients_failed": failed,
        "connect_errors": errors,
        "connect_s": round(connect_s, 3),
        "messages_published": args.messages,
        "publish_s": round(t_pub1 - t_pub0, 3),
        "deliveries_expected": expected,
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
        "server_user_s": round(use.user, 3),
        "server_kernel_s": round(use.kernel, 3),
        "server_cpu_share_of_one_core": round(cpu / elapsed, 3),
        "server_rss_kib_with_clients": rss_connected,
        "other_cpu_s": {k: round(v, 3) for k, v in use.extra.items()},
        "loadgen_cpu_s": round(loadgen_cpu, 3),
        "publisher_cpu_s": round(pub_cpu, 3),
        # everything the machine did in the window, and what is not ours (other jobs,
        # kernel threads): a large value means the run was disturbed
        "machine_cpu_s": round(use.machine, 3),
        "unaccounted_cpu_s": round(use.machine - cpu - use.extra_total - loadgen_cpu - pub_cpu, 3),
        "loadavg_after": c.loadavg(),
        "clients_still_open": sum(r["open"] for r in results),
        "client_close_codes": {
            k: sum(r["close_codes"].get(k, 0) for r in results)
            for k in {k for r in results for k in r["close_codes"]}
        },
        "server_rss_kib_idle": rss_idle,
    } | target.slow_consumers()  # read while the clients are still connected
    print(
        f"  [{name}] {received}/{expected} deliveries in {elapsed:.2f}s, server CPU {cpu:.2f}s",
        flush=True,
    )
    c.run_step(cleanup, loadgen.close)
    return out


# --------------------------------------------------------------------------- main


def source_state() -> dict[str, Any]:
    """Which code was measured: HEAD and uncommitted changes (read-only git calls)."""

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=c.ROOT, capture_output=True, text=True, timeout=10
            ).stdout
        except Exception:
            return ""

    dirty = git("status", "--porcelain", "--", "edge", "switchboard", "pyproject.toml")
    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "uncommitted_changes": [line[3:] for line in dirty.splitlines()],
        "otel_env": sorted(k for k in os.environ if k.startswith("OTEL_")),
    }


TABLE = [
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


def print_table(sb: dict[str, Any], ref: dict[str, Any], ratios: dict[str, Any]) -> None:
    rows = c.keyed_rows(sb, ref, [(label, key, False) for label, key in TABLE])
    backbone = sb["other_cpu_s"].get("backbone_nats_server")
    rows.append(("backbone nats-server CPU s (sb only)", backbone, "-", False))
    c.print_table(None, rows, widths=(14, 16), ratios=False)
    print("ratios switchboard / reference:")
    print(f"  delivered msgs/s        {c.fmt(ratios['delivered_msgs_per_s'])}")
    print(f"  CPU us per delivery     {c.fmt(ratios['server_cpu_us_per_delivery'])}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket subscribers")
    parser.add_argument("--messages", type=int, default=200, help="messages published per target")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (JSON)")
    parser.add_argument("--rate", type=float, default=20.0, help="published messages per second")
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=100, help="concurrent handshakes")
    parser.add_argument(
        "--stamp",
        action="store_true",
        help="publish with the time headers an edge sets on client publishes (Sb-Ts, Sb-Ts-Us)",
    )
    args = c.parse_args(parser, argv)

    started = c.now_utc()
    source = source_state()  # before the edge starts: the code it will import
    banner = (
        f"fan-out: {args.clients} clients, {args.messages} msgs x {args.size} B "
        f"at {args.rate:g}/s, {args.procs} load-generator process(es), {os.cpu_count()} CPUs"
    )
    results = c.run_targets("fanout", args, banner, measure, max_connections=args.clients + 100)

    sb, ref = results.get("switchboard"), results.get("reference")
    ratios: dict[str, Any] = {}
    if sb and ref:
        ratios = {
            key: c.ratio(sb[key], ref[key], ndigits=2)
            for key in ("delivered_msgs_per_s", "server_cpu_us_per_delivery")
        }
        print_table(sb, ref, ratios)
    else:
        print(json.dumps(results, indent=2))

    report = {
        "params": vars(args),
        "machine": c.machine_info(MACHINE_KEYS),
        "source": source,
        "results": results,
        "ratios_switchboard_over_reference": ratios,
    }
    c.save_report("fanout", started, report, args.out, header=False)
    return 0


if __name__ == "__main__":
    sys.exit(c.run_main(main))
