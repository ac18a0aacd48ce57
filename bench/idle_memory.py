"""Idle-connection memory: server RSS before and after opening N idle connections.

  switchboard  one edge process (`python -m switchboard edge`); each client
               authenticates with its own JWT (subprotocols `switchboard.v1`,
               `bearer.<jwt>`), gets `welcome`, subscribes to the shared channel
               `idle` and waits for the ack. The figure is the edge process only
               and includes all per-connection session state (websockets
               connection, Session, Outbox, writer and expiry tasks, the hub
               membership and the per-user NATS subscription `sb.user.<id>`).
  reference    nats-server's own WebSocket listener; each client sends CONNECT +
               `SUB idle 1` + PING and waits for PONG.

RSS is VmRSS from /proc/<pid>/status, read after the server has been idle for
`--settle` seconds, before and after the connections. Target (issue): <= 10 KiB per
idle connection. Clients are spread over `--procs` load-generator processes.
`--shared-user` gives every connection the same JWT subject, which shows what the
per-user NATS subscription costs.

    python bench/idle_memory.py [--connections 10000] [--procs 4] [--shared-user]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import _common as c

TARGET_KIB = 10.0
CHANNEL = "idle"


# --------------------------------------------------------------------------- load generator


async def worker(conn: Any, spec: dict[str, Any]) -> None:
    tokens: list[str] | None = None
    if spec["mode"] == "switchboard":
        if spec["shared_user"]:
            tokens = [c.mint_token("idle-shared")] * spec["clients"]
        else:
            tokens = c.mint_tokens("idle", spec["index"], spec["clients"])
    sockets, _ = await c.open_clients(conn, spec, tokens, CHANNEL, CHANNEL)
    while True:
        cmd = await c.pipe_recv(conn)
        if cmd[0] == "check":  # still open? (reader-less: close_code is set on EOF)
            await asyncio.sleep(0)
            conn.send(("checked", sum(1 for ws in sockets if ws.close_code is None)))
        elif cmd[0] == "close":
            c.abort_all(sockets)
            await asyncio.sleep(0.2)
            conn.send(("closed", None))
            return


# --------------------------------------------------------------------------- measurement


def settled_rss(pid: int, settle_s: float) -> int:
    """RSS after `settle_s` seconds of quiet (the last of a few samples)."""
    time.sleep(settle_s)
    return c.proc_rss_kib(pid)


def measure(
    target: c.Target, args: argparse.Namespace, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    pid = target.pid
    rss_before = settled_rss(pid, args.settle)
    concurrency = max(1, args.concurrency // args.procs)
    specs = c.client_specs(
        target, args.connections, args.procs, concurrency, shared_user=args.shared_user
    )
    workers = c.start_workers(worker, specs, cleanup)
    cpu0 = c.proc_cpu_s(pid)
    ready = workers.wait("ready", timeout=180)
    cpu1 = c.proc_cpu_s(pid)
    connected, failed, errors, open_s = c.report_ready(target.name, ready, "idle connections open")
    rss_peak_open = c.proc_rss_kib(pid)
    rss_after = settled_rss(pid, args.settle)
    still_open = sum(workers.ask(("check",), "checked", 30))
    per_conn = (rss_after - rss_before) / connected if connected else None
    c.run_step(cleanup, workers.close)
    return {
        "connections_requested": args.connections,
        "connections_open": connected,
        "connections_failed": failed,
        "connections_still_open_after_settle": still_open,
        "connect_errors": errors,
        "open_s": round(open_s, 2),
        "server_cpu_s_while_opening": round(cpu1 - cpu0, 2),
        "server_pid": pid,
        "rss_kib_before": rss_before,
        "rss_kib_right_after_open": rss_peak_open,
        "rss_kib_after": rss_after,
        "rss_delta_kib": rss_after - rss_before,
        "kib_per_connection": round(per_conn, 2) if per_conn is not None else None,
    }


def measure_target(
    target: c.Target, args: argparse.Namespace, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    """`measure`, then the server's own connection and subscription counts."""
    out = measure(target, args, cleanup)
    if isinstance(target, c.Switchboard):
        metrics = target.metrics()
        out["edge_metric_connections_after"] = c.prom_value(metrics, "sb_edge_connections")
        out["edge_metric_subscriptions_after"] = c.prom_value(metrics, "sb_edge_subscriptions")
    else:
        varz = target.varz()
        out["varz_connections_after"] = varz.get("connections")
        out["varz_subscriptions_after"] = varz.get("subscriptions")
    return out


TABLE = [
    ("connections open", "connections_open", False),
    ("  failed", "connections_failed", False),
    ("  still open after settle", "connections_still_open_after_settle", False),
    ("time to open s", "open_s", True),
    ("server CPU s while opening", "server_cpu_s_while_opening", True),
    ("server RSS before KiB", "rss_kib_before", True),
    ("server RSS after KiB", "rss_kib_after", True),
    ("RSS delta KiB", "rss_delta_kib", True),
    ("KiB per idle connection", "kib_per_connection", True),
]


def main(argv: list[str] | None = None) -> int:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--connections", type=int, default=10_000, help="idle connections")
    parser.add_argument("--procs", type=int, default=4, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    parser.add_argument("--settle", type=float, default=3.0, help="quiet seconds before RSS")
    parser.add_argument(
        "--shared-user",
        action="store_true",
        help="one JWT subject for all connections (one sb.user.<id> subscription on the "
        "edge instead of one per connection)",
    )
    args = c.parse_args(parser, argv)

    started = c.now_utc()
    nofile = c.raise_nofile()
    busy = c.busy_cores(1.0)
    users = "one shared user" if args.shared_user else "a distinct user each"
    banner = (
        f"idle memory: {args.connections} connections ({users}) over {args.procs} "
        f"load-generator processes, {c.LOADGEN_NOTE}; RLIMIT_NOFILE {nofile}; "
        f"machine busy before start: {busy} cores"
    )
    if args.connections + 100 > nofile:
        banner += f"\nwarning: {args.connections} connections need more than {nofile} fds"
    results = c.run_targets(
        "idle_memory", args, banner, measure_target, max_connections=args.connections + 1000
    )

    sb, ref = results.get("switchboard", {}), results.get("reference", {})
    c.print_table("idle connections: server RSS (VmRSS)", c.keyed_rows(sb, ref, TABLE))
    kib = sb.get("kib_per_connection")
    verdict = None
    if kib is not None:
        verdict = kib <= TARGET_KIB
        print(
            f"switchboard edge: {kib:.2f} KiB per idle connection (edge process only, "
            f"includes session state and "
            f"{'one shared' if args.shared_user else 'a per-connection'} user subscription); "
            f"target <= "
            f"{TARGET_KIB:g} KiB: {'met' if verdict else 'NOT met'}"
        )
    report = {
        "params": vars(args),
        "results": results,
        "ratios_switchboard_over_reference": {
            "kib_per_connection": c.ratio(kib, ref.get("kib_per_connection")),
        },
        "target_kib_per_connection": TARGET_KIB,
        "target_met": verdict,
    }
    c.save_report("idle_memory", started, report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(c.run_main(main))
