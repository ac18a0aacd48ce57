"""Publish -> client latency at a target delivery rate, one channel, N subscribers.

  switchboard  a nats-server (the backbone) + one edge process; N clients (JWT in
               the subprotocol) subscribe to channel `lat`; a nats-py publisher
               publishes to `sb.ch.lat` on the backbone.
  reference    nats-server's own WebSocket listener; N clients `SUB sb.ch.lat`; the
               same nats-py publisher publishes to `sb.ch.lat` on that server.

For each target delivery rate R (default 20,000/s and 100,000/s) the publisher sends
R/N messages/s (JSON, `--size` bytes, the send time `time.time_ns()` in field `t`)
for `--warmup` + `--measure` seconds. Subscribers (in `--procs` load-generator
processes) take `time.time_ns()` when a WebSocket frame arrives and record receive
minus send for every message sent inside the measured window (wall clock: the
publisher and the subscribers are different processes on one machine). Reported per
system and rate: the offered delivery rate, deliveries received, the achieved
delivery rate (deliveries / (last receive - first send in the window)), latency
p50/p90/p99/max, and the CPU the server used. A message counts as lost if it has not
arrived `--drain` seconds after the last publish.

    python bench/latency.py [--subscribers 100] [--rates 20000,100000] [--measure 8]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import _common as c

from switchboard.contract.channels import channel_subject

CHANNEL = "lat"
SUBJECT = channel_subject(c.PREFIX, CHANNEL)
STAMP_TEXT = re.compile(r'"t":(\d+)')
STAMP_BYTES = re.compile(rb'"t":(\d+)[,}]')
CARRY = 48  # longer than any `"t":<19 digits>,`: a stamp cut by a frame boundary fits


# --------------------------------------------------------------------------- load generator


class Recorder:
    """Latency samples of the messages sent inside the window, for one process."""

    def __init__(self) -> None:
        self.lo = self.hi = 0
        self.samples = array.array("q")
        self.in_window = 0
        self.total = 0
        self.frames = 0
        self.last_recv_ns = 0

    def arm(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.samples = array.array("q")
        self.in_window = self.total = self.frames = 0
        self.last_recv_ns = 0

    def add(self, now: int, stamps: list[Any]) -> None:
        self.frames += 1
        self.total += len(stamps)
        lo, hi, samples = self.lo, self.hi, self.samples
        hit = False
        for s in stamps:
            t = int(s)
            if lo <= t < hi:
                samples.append(now - t)
                hit = True
        if hit:
            self.in_window = len(samples)
            self.last_recv_ns = now


async def _sb_reader(ws: Any, rec: Recorder) -> None:
    from websockets.exceptions import ConnectionClosed

    now_ns, findall = time.time_ns, STAMP_TEXT.findall
    with contextlib.suppress(ConnectionClosed):
        async for text in ws:
            rec.add(now_ns(), findall(text))


async def _nats_reader(ws: Any, rec: Recorder) -> None:
    from websockets.exceptions import ConnectionClosed

    now_ns, finditer = time.time_ns, STAMP_BYTES.finditer
    carry = b""
    with contextlib.suppress(ConnectionClosed):
        async for data in ws:
            now = now_ns()
            buf = carry + (data if isinstance(data, bytes) else data.encode())
            stamps, end = [], 0
            for m in finditer(buf):
                stamps.append(m.group(1))
                end = m.end()
            carry = buf[max(end, len(buf) - CARRY) :]
            rec.add(now, stamps)
            if b"PING\r\n" in data:  # server keepalive
                await ws.send(b"PONG\r\n")


async def worker(conn: Any, spec: dict[str, Any]) -> None:
    rec = Recorder()
    sb = spec["mode"] == "switchboard"
    reader = _sb_reader if sb else _nats_reader
    tokens = c.mint_tokens("lat", spec["index"], spec["clients"]) if sb else None
    sockets, readers = await c.open_clients(
        conn, spec, tokens, CHANNEL, SUBJECT, lambda ws: reader(ws, rec)
    )
    while True:
        cmd = await c.pipe_recv(conn)
        if cmd[0] == "arm":
            rec.arm(cmd[1], cmd[2])
            conn.send(("armed", None))
        elif cmd[0] == "collect":
            _, expected_per_client, drain_until = cmd
            expected = expected_per_client * len(sockets)
            # polling: readers bump plain counters (an Event per message would cost more)
            while rec.in_window < expected and time.time() < drain_until:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            conn.send(
                (
                    "collected",
                    {
                        "samples": rec.samples.tobytes(),
                        "in_window": rec.in_window,
                        "messages": rec.total,
                        "frames": rec.frames,
                        "last_recv_ns": rec.last_recv_ns,
                        "open": sum(1 for r in readers if not r.done()),
                        "close_codes": sorted(
                            {str(ws.close_code) for ws in sockets if ws.close_code is not None}
                        ),
                    },
                )
            )
        elif cmd[0] == "close":
            c.abort_all(sockets)
            for r in readers:
                r.cancel()
            conn.send(("closed", None))
            return


# --------------------------------------------------------------------------- publisher


def payload(stamp_ns: int, size: int) -> bytes:
    head = b'{"t":' + str(stamp_ns).encode() + b',"p":"'
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


async def run_publisher(
    nc: Any, rate: float, start_ns: int, lo: int, hi: int, size: int
) -> dict[str, Any]:
    """Message k is due at start + k/rate (late ticks catch up in a burst); stop at `hi`.

    Each message carries the time it is actually handed to nats-py.
    """
    sent = in_window = late_max_ns = 0
    interval_ns = 1e9 / rate
    now_ns = time.time_ns
    await asyncio.sleep(max(0.0, (start_ns - now_ns()) / 1e9))
    while True:
        now = now_ns()
        if now >= hi:
            break
        due = int((now - start_ns) / interval_ns) + 1
        while sent < due:
            t = now_ns()
            if t >= hi:
                break
            late_max_ns = max(late_max_ns, t - (start_ns + int(sent * interval_ns)))
            await nc.publish(SUBJECT, payload(t, size))
            sent += 1
            in_window += lo <= t
        await asyncio.sleep(0.001)
    await nc.flush()
    return {"sent": sent, "in_window": in_window, "max_send_lag_ms": round(late_max_ns / 1e6, 2)}


# --------------------------------------------------------------------------- measurement


def pct(sorted_ns: array.array[int], q: float) -> float | None:
    """The q-th percentile of nanosecond samples, in ms."""
    ns = c.percentile(sorted_ns, q)
    return None if ns is None else round(ns / 1e6, 3)


def one_rate(
    target: c.Target,
    rate: float,
    workers: c.Workers,
    subscribers: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    msg_rate = rate / subscribers

    async def go() -> tuple[dict[str, int], dict[str, Any]]:
        nc = await c.connect_publisher(target.nats_url, "bench-latency-publisher")
        try:
            start_ns = time.time_ns() + 300_000_000
            lo = start_ns + int(args.warmup * 1e9)
            window = {"start_ns": start_ns, "lo": lo, "hi": lo + int(args.measure * 1e9)}
            workers.ask(("arm", window["lo"], window["hi"]), "armed", 30)
            pub = await run_publisher(nc, msg_rate, start_ns, lo, window["hi"], args.size)
        finally:
            await nc.close()
        return window, pub

    meter = c.CpuMeter(target.pid, target.extra_pids)
    lg0 = workers.cpu_s()
    setup, pub = asyncio.run(go())
    while_publishing = meter.read()
    in_window_sent = pub["in_window"]
    drain_until = time.time() + args.drain
    done = workers.ask(("collect", in_window_sent, drain_until), "collected", args.drain + 30)
    use = meter.read()
    lg1 = workers.cpu_s()
    wall = use.wall

    samples: array.array[int] = array.array("q")
    for d in done:
        part: array.array[int] = array.array("q")
        part.frombytes(d["samples"])
        samples.extend(part)
    received = len(samples)
    expected = in_window_sent * subscribers
    last_recv = max((d["last_recv_ns"] for d in done), default=0)
    span_s = (last_recv - setup["lo"]) / 1e9 if received else None
    achieved = received / span_s if span_s else 0.0
    sorted_samples = array.array("q", sorted(samples))
    out = {
        "target_deliveries_per_s": rate,
        "published_msgs_per_s": round(msg_rate, 2),
        "messages_in_window": in_window_sent,
        "messages_published_total": pub["sent"],
        "publisher_max_send_lag_ms": pub["max_send_lag_ms"],
        "deliveries_expected": expected,
        "deliveries_received": received,
        "deliveries_lost_or_late": expected - received,
        "achieved_deliveries_per_s": round(achieved, 1),
        "ws_frames_received": sum(d["frames"] for d in done),
        "deliveries_per_frame": round(
            sum(d["messages"] for d in done) / max(1, sum(d["frames"] for d in done)), 2
        ),
        "latency_ms_p50": pct(sorted_samples, 50),
        "latency_ms_p90": pct(sorted_samples, 90),
        "latency_ms_p99": pct(sorted_samples, 99),
        "latency_ms_max": pct(sorted_samples, 100),
        "server_cpu_cores_while_publishing": round(
            while_publishing.server / while_publishing.wall, 3
        ),
        "server_cpu_s": round(use.server, 2),
        "server_cpu_us_per_delivery": round(use.server / received * 1e6, 2) if received else None,
        "other_server_cpu_s": {k: round(v, 2) for k, v in use.extra.items()},
        "loadgen_cpu_cores": round((lg1 - lg0) / wall, 3),
        # the publisher (this process) counts among the other processes: it is small
        **use.machine_cores((lg1 - lg0) / wall),
        "clients_open_after": sum(d["open"] for d in done),
        "client_close_codes": sorted({x for d in done for x in d["close_codes"]}),
    }
    print(
        f"  [{target.name} @ {rate:,.0f}/s] {received:,}/{expected:,} deliveries, achieved "
        f"{achieved:,.0f}/s, p50 {out['latency_ms_p50']} ms, p99 {out['latency_ms_p99']} ms, "
        f"server {out['server_cpu_cores_while_publishing']} cores",
        flush=True,
    )
    return out


def measure_system(
    target: c.Target, args: argparse.Namespace, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    name = target.name
    specs = c.client_specs(target, args.subscribers, args.procs)
    workers = c.start_workers(worker, specs, cleanup)
    ready = workers.wait("ready", timeout=120)
    connected = sum(r["connected"] for r in ready)
    errors = sorted({e for r in ready for e in r["errors"]})
    print(
        f"  [{name}] {connected} subscribers" + (f", errors: {errors}" if errors else ""),
        flush=True,
    )
    if connected == 0:
        raise RuntimeError(f"{name}: no subscriber connected: {errors}")
    out: dict[str, Any] = {"subscribers": connected, "connect_errors": errors, "rates": {}}
    slow = target.slow_consumers()
    for rate in args.rate_list:
        quiet = c.wait_quiet(max_wait_s=args.quiet_wait)
        r = one_rate(target, rate, workers, connected, args)
        r["machine_busy_cores_before"] = quiet
        slow, before = target.slow_consumers(), slow
        r |= {k: v - before[k] for k, v in slow.items()}  # during this rate
        out["rates"][str(int(rate))] = r
    c.run_step(cleanup, workers.close)
    return out


TABLE = [
    ("published msgs/s (one channel)", "published_msgs_per_s", False),
    ("deliveries expected (window)", "deliveries_expected", False),
    ("deliveries received", "deliveries_received", True),
    ("  lost or later than --drain", "deliveries_lost_or_late", False),
    ("achieved deliveries/s", "achieved_deliveries_per_s", True),
    ("deliveries per WS frame", "deliveries_per_frame", True),
    ("latency p50 ms", "latency_ms_p50", True),
    ("latency p90 ms", "latency_ms_p90", True),
    ("latency p99 ms", "latency_ms_p99", True),
    ("latency max ms", "latency_ms_max", True),
    ("server CPU (cores, publishing)", "server_cpu_cores_while_publishing", True),
    ("server CPU us / delivery", "server_cpu_us_per_delivery", True),
    *c.MACHINE_ROWS,
    ("publisher max send lag ms", "publisher_max_send_lag_ms", False),
]


def main(argv: list[str] | None = None) -> int:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--subscribers", type=int, default=100, help="WebSocket subscribers")
    parser.add_argument(
        "--rates", default="20000,100000", help="target deliveries/s, comma-separated"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    parser.add_argument("--measure", type=float, default=8.0, help="measured seconds per rate")
    parser.add_argument("--drain", type=float, default=6.0, help="max s to wait after publishing")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (JSON)")
    parser.add_argument("--procs", type=int, default=4, help="load-generator processes")
    args = c.parse_args(parser, argv, quiet_wait=10.0)
    args.rate_list = [float(x) for x in args.rates.split(",") if x.strip()]

    started = c.now_utc()
    banner = (
        f"latency: {args.subscribers} subscribers on one channel over {args.procs} "
        f"load-generator processes, target rates {args.rates}/s, {args.size} B payloads, "
        f"{args.warmup:g}s warm-up + {args.measure:g}s measured; {c.LOADGEN_NOTE}"
    )
    results = c.run_targets(
        "latency", args, banner, measure_system, max_connections=args.subscribers + 100
    )

    ratios: dict[str, Any] = {}
    for rate in args.rate_list:
        key = str(int(rate))
        sb = results.get("switchboard", {}).get("rates", {}).get(key, {})
        ref = results.get("reference", {}).get("rates", {}).get(key, {})
        evicted = (
            "slow consumers evicted",
            sb.get("slow_consumer_evictions"),
            ref.get("slow_consumers"),
            False,
        )
        c.print_table(f"target {rate:,.0f} deliveries/s", [*c.keyed_rows(sb, ref, TABLE), evicted])
        ratios[key] = {
            k: c.ratio(sb.get(k), ref.get(k))
            for k in ("achieved_deliveries_per_s", "latency_ms_p50", "latency_ms_p99")
        }
    print(
        "latency = subscriber's time.time_ns() at frame arrival - publisher's time.time_ns() "
        "before publish; includes the load generator's own queueing"
    )
    params = {k: v for k, v in vars(args).items() if k != "rate_list"}
    report = {"params": params, "results": results, "ratios_switchboard_over_reference": ratios}
    c.save_report("latency", started, report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(c.run_main(main))
