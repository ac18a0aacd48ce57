"""Handshake rate: completed connection set-ups per second, each followed by a close.

  switchboard  one edge process; a handshake is the full WebSocket upgrade with the
               JWT checked from the subprotocol (`switchboard.v1`, `bearer.<jwt>`),
               counted when the `welcome` frame arrives. The edge also joins the
               user's NATS subject `sb.user.<id>` for each connection (tokens are
               cycled from a pool of distinct users per load generator).
  reference    nats-server's WebSocket listener; a handshake is the upgrade +
               `CONNECT` + `PING`, counted when `PONG` arrives.

After counting, the client closes (WebSocket closing handshake) and starts the next
one. `--procs` load-generator processes x `--concurrency` loops each, for
`--duration` seconds per target. Reported: handshakes/s, handshake latency
p50/p99, and the server's CPU use (utime+stime from /proc/<pid>/stat) over the
window, with handshakes per server CPU-second (what one fully busy core would give).
Target (issue): >= 5,500 handshakes/s per edge process.

    python bench/handshakes.py [--procs 4] [--concurrency 50] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

import _common as c

TARGET_PER_S = 5500.0


# --------------------------------------------------------------------------- load generator


async def _sb_handshake(url: str, token: str) -> Any:
    return await c.sb_open(url, token, open_timeout=30)


async def _nats_handshake(url: str, token: str) -> Any:
    return await c.nats_ws_open(url, subject=None, open_timeout=30)


async def worker(conn: Any, spec: dict[str, Any]) -> None:
    tokens: list[str] = [""]
    if spec["mode"] == "switchboard":
        tokens = c.mint_tokens("hs", spec["index"], spec["tokens"])
    handshake = _sb_handshake if spec["mode"] == "switchboard" else _nats_handshake
    conn.send(("ready", None))
    cmd = await c.pipe_recv(conn)
    assert cmd[0] == "go", cmd
    start_at, duration = cmd[1], cmd[2]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t_start = time.monotonic()
    t_end = t_start + duration
    latencies_ms: list[float] = []
    errors: dict[str, int] = {}
    close_errors = 0
    counter = [0]
    cpu0 = c.self_cpu_s()

    async def loop(k: int) -> None:
        nonlocal close_errors
        i = k
        while time.monotonic() < t_end:
            token = tokens[i % len(tokens)]
            i += spec["concurrency"]
            t0 = time.monotonic()
            try:
                ws = await handshake(spec["url"], token)
            except Exception as exc:
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[key] = errors.get(key, 0) + 1
                await asyncio.sleep(0.01)
                continue
            t1 = time.monotonic()
            if t1 <= t_end:
                counter[0] += 1
                latencies_ms.append((t1 - t0) * 1000)
            try:
                await ws.close()
            except Exception:
                close_errors += 1

    await asyncio.gather(*(loop(k) for k in range(spec["concurrency"])))
    cpu = c.self_cpu_s() - cpu0
    conn.send(
        (
            "done",
            {
                "handshakes": counter[0],
                "latencies_ms": latencies_ms,
                "errors": errors,
                "close_errors": close_errors,
                "elapsed_s": time.monotonic() - t_start,
                "cpu_s": cpu,
            },
        )
    )
    while (await c.pipe_recv(conn))[0] != "close":
        pass
    conn.send(("closed", None))


# --------------------------------------------------------------------------- measurement


def measure(
    target: c.Target, args: argparse.Namespace, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    specs = [
        {
            "mode": target.mode,
            "url": target.ws_url,
            "index": i,
            "concurrency": args.concurrency,
            "tokens": args.tokens,
        }
        for i in range(args.procs)
    ]
    workers = c.start_workers(worker, specs, cleanup)
    workers.wait("ready", timeout=60)
    quiet = c.wait_quiet(max_wait_s=args.quiet_wait)
    start_at = time.time() + 0.5
    workers.send("go", start_at, args.duration)
    time.sleep(max(0.0, start_at - time.time()))
    meter = c.CpuMeter(target.pid, target.extra_pids)
    time.sleep(args.duration)
    use = meter.read()
    window = use.wall
    done = workers.wait("done", timeout=args.duration + 60)
    c.run_step(cleanup, workers.close)

    handshakes = sum(d["handshakes"] for d in done)
    lat = sorted(x for d in done for x in d["latencies_ms"])
    errors: dict[str, int] = {}
    for d in done:
        for k, v in d["errors"].items():
            errors[k] = errors.get(k, 0) + v
    server_cpu = use.server
    loadgen_cpu = sum(d["cpu_s"] for d in done)
    rate = handshakes / args.duration
    p50, p99 = c.percentile(lat, 50), c.percentile(lat, 99)
    print(
        f"  [{target.name}] {handshakes} handshakes in {args.duration:g}s = {rate:,.0f}/s, "
        f"server CPU {server_cpu / window:.2f} cores"
        + (f", {sum(errors.values())} failed" if errors else ""),
        flush=True,
    )
    return {
        "handshakes": handshakes,
        "handshakes_per_s": round(rate, 1),
        "failed": sum(errors.values()),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:8]),
        "close_errors": sum(d["close_errors"] for d in done),
        "latency_ms_p50": round(p50, 2) if p50 is not None else None,
        "latency_ms_p99": round(p99, 2) if p99 is not None else None,
        "server_pid": target.pid,
        "server_cpu_s": round(server_cpu, 2),
        "server_user_s": round(use.user, 2),
        "server_kernel_s": round(use.kernel, 2),
        "server_cpu_cores": round(server_cpu / window, 3),
        "handshakes_per_server_cpu_s": round(handshakes / server_cpu, 1) if server_cpu else None,
        "other_server_cpu_s": {k: round(v, 2) for k, v in use.extra.items()},
        "loadgen_cpu_s": round(loadgen_cpu, 2),
        "loadgen_cpu_cores": round(loadgen_cpu / args.duration, 3),
        **use.machine_cores(loadgen_cpu / args.duration),
        "machine_busy_cores_before": quiet,
    }


def measure_target(
    target: c.Target, args: argparse.Namespace, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    """`measure`, with the server's own count of the connections it accepted meanwhile."""
    if isinstance(target, c.Reference):
        total0 = target.varz().get("total_connections")
        out = measure(target, args, cleanup)
        total1 = target.varz().get("total_connections")
        if isinstance(total0, int) and isinstance(total1, int):
            out["varz_total_connections_delta"] = total1 - total0
        return out
    m0 = target.metrics()
    out = measure(target, args, cleanup)
    m1 = target.metrics()
    out["edge_connections_total_delta"] = c.prom_value(
        m1, "sb_edge_connections_total"
    ) - c.prom_value(m0, "sb_edge_connections_total")
    with contextlib.suppress(Exception):
        refusals = [
            line for line in m1.splitlines() if line.startswith("sb_edge_upgrade_refusals_total{")
        ]
        out["edge_upgrade_refusals"] = refusals
    return out


TABLE = [
    ("handshakes completed", "handshakes", True),
    ("handshakes/s", "handshakes_per_s", True),
    ("  failed", "failed", False),
    ("handshake latency p50 ms", "latency_ms_p50", True),
    ("handshake latency p99 ms", "latency_ms_p99", True),
    ("server CPU (cores busy)", "server_cpu_cores", True),
    ("  user s", "server_user_s", True),
    ("  kernel s", "server_kernel_s", True),
    ("handshakes per server CPU-s", "handshakes_per_server_cpu_s", True),
    *c.MACHINE_ROWS,
]


def main(argv: list[str] | None = None) -> int:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--procs", type=int, default=4, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=50, help="loops per process")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per target")
    parser.add_argument("--tokens", type=int, default=1000, help="distinct users per process")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between targets")
    args = c.parse_args(parser, argv, quiet_wait=20.0)

    started = c.now_utc()
    banner = (
        f"handshakes: {args.procs} load-generator processes x {args.concurrency} loops, "
        f"{args.duration:g}s per target; {c.LOADGEN_NOTE}"
    )
    results = c.run_targets(
        "handshakes",
        args,
        banner,
        measure_target,
        max_connections=100_000,
        pause_s=args.pause,
    )

    sb, ref = results.get("switchboard", {}), results.get("reference", {})
    title = f"handshakes over {args.duration:g}s (upgrade ... first frame, then close)"
    c.print_table(title, c.keyed_rows(sb, ref, TABLE))
    rate = sb.get("handshakes_per_s")
    verdict = None
    if rate is not None:
        verdict = rate >= TARGET_PER_S
        print(
            f"switchboard edge: {rate:,.0f} handshakes/s measured "
            f"({sb.get('handshakes_per_server_cpu_s') or 0:,.0f} per edge CPU-second); "
            f"target >= {TARGET_PER_S:,.0f}/s per edge process: {'met' if verdict else 'NOT met'}"
        )
    report = {
        "params": vars(args),
        "results": results,
        "ratios_switchboard_over_reference": {
            "handshakes_per_s": c.ratio(rate, ref.get("handshakes_per_s")),
            "handshakes_per_server_cpu_s": c.ratio(
                sb.get("handshakes_per_server_cpu_s"), ref.get("handshakes_per_server_cpu_s")
            ),
        },
        "target_handshakes_per_s": TARGET_PER_S,
        "target_met": verdict,
    }
    c.save_report("handshakes", started, report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(c.run_main(main))
