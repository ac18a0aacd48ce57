"""Switchboard against Centrifugo and nats-server: idle memory, handshakes, fan-out, rooms.

`make bench` runs this. For each benchmark and each target (the Switchboard edge behind its
nats-server, nats-server's own WebSocket listener, Centrifugo), it starts the server fresh,
drives it with the Go load generator (bench/loadgen) and stops it; targets are interleaved
and their order rotates between repetitions. It writes the raw results to
bench/results/compare-<time>.json and, for a full run, the tables between the
`<!-- bench:compare:start -->` and `<!-- bench:compare:end -->` markers of
docs/benchmarks.md. Nothing here is a test assertion.

    python bench/compare.py              # 3 repetitions at full size (~25 min)
    python bench/compare.py --quick      # small sizes, one repetition, docs untouched
    python bench/compare.py --targets switchboard,nats --benchmarks rooms --reps 1
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers
from peers import EXTRA_TARGETS, LABELS, ROOT, TARGETS, BenchError, Running

BENCHMARKS = ("idle", "handshakes", "fanout", "rooms")
DOCS = ROOT / "docs" / "benchmarks.md"
START_MARK = "<!-- bench:compare:start -->"
END_MARK = "<!-- bench:compare:end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is (the defaults are issue 15's)."""

    idle_connections: int = 10_000
    idle_hold_s: float = 5.0
    handshake_seconds: float = 10.0
    handshake_loops: int = 100
    fanout_subscribers: int = 1_000
    fanout_messages: int = 1_000
    rooms_connections: int = 10_000
    rooms_channels: int = 1_000
    rooms_rate: float = 5_000.0
    rooms_seconds: float = 10.0
    rooms_warmup_s: float = 3.0
    payload_bytes: int = 100
    connect_concurrency: int = 100


QUICK = Sizes(
    idle_connections=300,
    idle_hold_s=1.0,
    handshake_seconds=2.0,
    handshake_loops=10,
    fanout_subscribers=100,
    fanout_messages=100,
    rooms_connections=200,
    rooms_channels=20,
    rooms_rate=500.0,
    rooms_seconds=2.0,
    rooms_warmup_s=0.5,
    connect_concurrency=50,
)


# --------------------------------------------------------------------------- one run


def loadgen_args(bench: str, target: Running, sizes: Sizes, tag: str) -> list[str]:
    """The load generator's flags for one benchmark against one running target."""
    common = [
        f"-proto={target.proto}",
        f"-url={target.ws_url}",
        f"-secret={peers.SECRET}",
        "-pids=" + ",".join(f"{k}={v}" for k, v in target.pids),
        f"-size={sizes.payload_bytes}",
    ]
    connecting = f"-concurrency={sizes.connect_concurrency}"
    publish = [f"-publish-url={target.publish_url}", f"-api-key={peers.API_KEY}", "-hold=2"]
    if bench == "idle":
        return [
            *common,
            connecting,
            "-mode=idle",
            f"-n={sizes.idle_connections}",
            "-channel=idle",
            f"-hold={sizes.idle_hold_s}",
            f"-user-prefix=idle-{tag}",
        ]
    if bench == "handshakes":
        return [
            *common,
            "-mode=handshakes",
            f"-concurrency={sizes.handshake_loops}",
            f"-seconds={sizes.handshake_seconds}",
            f"-user-prefix=hs-{tag}",
        ]
    if bench == "fanout":
        return [
            *common,
            connecting,
            *publish,
            "-mode=fanout",
            f"-n={sizes.fanout_subscribers}",
            f"-messages={sizes.fanout_messages}",
            "-rate=0",
            "-channel=fanout",
            f"-user-prefix=fan-{tag}",
        ]
    return [
        *common,
        connecting,
        *publish,
        "-mode=rooms",
        f"-n={sizes.rooms_connections}",
        f"-channels={sizes.rooms_channels}",
        f"-rate={sizes.rooms_rate}",
        f"-seconds={sizes.rooms_seconds}",
        f"-warmup={sizes.rooms_warmup_s}",
        f"-user-prefix=room-{tag}",
    ]


def run_loadgen(binary: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """Run the load generator once; its JSON report (its stderr goes to ours)."""
    proc = subprocess.Popen(
        [str(binary), *args], stdout=subprocess.PIPE, stderr=None, stdin=subprocess.DEVNULL
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchError(f"load generator still running after {timeout:.0f}s: killed") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise BenchError(f"load generator exited with {proc.returncode}: {' '.join(args)}")
    try:
        return dict(json.loads(out))
    except ValueError as exc:
        raise BenchError(f"load generator printed no JSON report ({exc}): {out[:200]!r}") from None


def _cpu(report: dict[str, Any], key: str, name: str) -> float | None:
    entry = report.get(key, {}).get(name, {})
    value = entry.get("cpu_s")
    return float(value) if isinstance(value, int | float) else None


def _per(numerator: float | None, denominator: float | None, scale: float = 1.0) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator * scale / denominator, 3)


def _ms(latency: dict[str, Any], key: str) -> float | None:
    value = latency.get(key)
    return round(value / 1000, 3) if isinstance(value, int | float) else None


def derive(bench: str, report: dict[str, Any]) -> tuple[dict[str, float | None], list[str]]:
    """The figures of one run (the table's rows) and what made it incomplete, if anything."""
    problems: list[str] = []
    connect = report.get("connect", {})
    if connect.get("failed"):
        problems.append(f"{connect['failed']} connections failed: {connect.get('errors')}")
    if report.get("dropped"):
        problems.append(f"{report['dropped']} dropped by the server: {report['dropped_reasons']}")
    if bench == "idle":
        rss = report["rss"]
        return {
            "kib_per_connection": rss["server"].get("kib_per_connection"),
            "backbone_kib_per_connection": rss.get("backbone", {}).get("kib_per_connection"),
            "connections_open": report["open_at_sample"],
        }, problems
    if bench == "handshakes":
        if report.get("errors_total"):
            problems.append(f"{report['errors_total']} handshakes failed: {report['errors']}")
        cpu = _cpu(report, "cpu", "server")
        return {
            "handshakes_per_cpu_s": _per(report["handshakes"], cpu),
            "handshakes_per_s": report["per_s"],
            "server_cores": _per(cpu, report["seconds"]),
            "handshake_p99_ms": _ms(report["latency_us"], "p99"),
        }, problems
    delivered, expected = report["deliveries"], report["expected_deliveries"]
    if delivered < expected:
        problems.append(f"{expected - delivered} of {expected} deliveries missing")
    window = report["window_s"]
    rate, published = report["rate"], report["published"]
    offered = expected * rate / published if rate and published else None
    figures = {
        "us_per_delivery": _per(_cpu(report, "cpu", "server"), delivered, 1e6),
        "backbone_us_per_delivery": _per(_cpu(report, "cpu", "backbone"), delivered, 1e6),
        "deliveries_per_s": report["deliveries_per_s"],
        "offered_deliveries_per_s": round(offered, 1) if offered else None,
        "deliveries_per_frame": _per(delivered, report["frames"]),
        "p50_ms": _ms(report["latency_us"], "p50"),
        "p99_ms": _ms(report["latency_us"], "p99"),
        "max_ms": _ms(report["latency_us"], "max"),
        "drain_ms": max(0.0, report["drain_ms"]),
        "window_s": window,
    }
    return figures, problems


def other_cores(report: dict[str, Any]) -> float | None:
    """Cores used in the CPU window by processes that are not part of the run (other jobs)."""
    cpu = report.get("cpu") or report.get("connect_cpu") or {}
    window = cpu.get("wall_s")
    if not window or "machine" not in cpu:
        return None
    ours = sum(v.get("cpu_s", 0.0) for v in cpu.values() if isinstance(v, dict))
    ours -= cpu["machine"]["cpu_s"]
    # clamped: /proc tick accounting can put ours a tick above the machine's total
    return max(0.0, round((cpu["machine"]["cpu_s"] - ours) / window, 2))


# --------------------------------------------------------------------------- the machine


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; servers and the load generator inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def busy_cores(seconds: float = 1.0) -> float:
    def busy() -> float:
        with open("/proc/stat") as f:
            parts = f.readline().split()
        vals = [int(x) for x in parts[1:9]]
        return (sum(vals) - vals[3] - vals[4]) / CLK_TCK

    b0 = busy()
    time.sleep(seconds)
    return round((busy() - b0) / seconds, 2)


def wait_quiet(max_wait_s: float, max_busy: float = 0.3) -> float:
    """Wait up to `max_wait_s` for a nearly idle machine; the last busy-cores figure."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_cores()
    while busy > max_busy and time.monotonic() < deadline:
        busy = busy_cores()
    return busy


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "--short=12", "HEAD"),
        "dirty_edge_or_switchboard": bool(git("status", "--porcelain", "edge", "switchboard")),
    }


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "go": peers.go_version(),
        "nofile_soft_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


# --------------------------------------------------------------------------- summary


# (benchmark, figure, label, better) rows of the table, in order
ROWS: list[tuple[str, str, str, str]] = [
    ("idle", "kib_per_connection", "idle memory per connection, KiB (RSS delta / N)", "lower"),
    ("handshakes", "handshakes_per_cpu_s", "handshakes per server CPU-second", "higher"),
    ("handshakes", "handshakes_per_s", "handshakes per second (wall clock)", "higher"),
    ("fanout", "us_per_delivery", "burst fan-out: server CPU µs per delivery", "lower"),
    ("fanout", "deliveries_per_frame", "burst fan-out: deliveries per WebSocket frame", "-"),
    ("rooms", "us_per_delivery", "rooms: server CPU µs per delivery", "lower"),
    ("rooms", "p50_ms", "rooms: p50 publish → client, ms", "lower"),
    ("rooms", "p99_ms", "rooms: p99 publish → client, ms", "lower"),
    ("rooms", "deliveries_per_s", "rooms: deliveries per second received", "higher"),
]


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{bench.figure: {target: {min, median, max, n}}} over the complete runs."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        if run["problems"]:
            continue
        for figure, value in run["figures"].items():
            if value is None:
                continue
            slot = out.setdefault(f"{run['benchmark']}.{figure}", {})
            slot.setdefault(run["target"], {"values": []})["values"].append(value)
    for per_target in out.values():
        for entry in per_target.values():
            values = sorted(entry["values"])
            entry |= {
                "min": values[0],
                "median": statistics.median(values),
                "max": values[-1],
                "n": len(values),
            }
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    if entry["n"] == 1:
        return fmt(entry["median"])
    return f"{fmt(entry['min'])} / {fmt(entry['median'])} / {fmt(entry['max'])}"


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b or not b["median"]:
        return "-"
    return f"{a['median'] / b['median']:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The block docs/benchmarks.md gets between the markers."""
    targets = report["targets"]
    summary = report["summary"]
    sizes = report["sizes"]
    reps = report["repetitions"]
    head = ["measure", *(LABELS[t] for t in targets)]
    ratio_targets = [t for t in targets if t != "centrifugo"] if "centrifugo" in targets else []
    short = {t: LABELS[t].removesuffix(" WS").removesuffix(" edge") for t in ratio_targets}
    head += [f"{short[t]} / Centrifugo" for t in ratio_targets]
    lines = [
        f"Run `{report['name']}` on {report['started_utc'][:10]}, code at commit "
        f"`{report['git']['commit'][:7]}`"
        + (" (with uncommitted changes)" if report["git"]["dirty_edge_or_switchboard"] else "")
        + f"; {reps} repetition{'s' if reps > 1 else ''}, targets interleaved. "
        "Cells: min / median / max over the complete runs; ratios of the medians.",
        "",
        "| " + " | ".join(head) + " |",
        "|---" + "|---:" * (len(head) - 1) + "|",
    ]
    for bench, figure, label, better in ROWS:
        if bench not in report["benchmarks"]:
            continue
        per_target = summary.get(f"{bench}.{figure}", {})
        row = [label + (f" ({better} is better)" if better != "-" else "")]
        row += [cell(per_target.get(t)) for t in targets]
        row += [ratio(per_target.get(t), per_target.get("centrifugo")) for t in ratio_targets]
        lines.append("| " + " | ".join(row) + " |")
    backbone = summary.get("rooms.backbone_us_per_delivery", {}).get("switchboard")
    described = {
        "idle": f"idle {sizes['idle_connections']:,} connections (each its own user, "
        "subscribed to one shared channel)",
        "handshakes": f"handshakes for {sizes['handshake_seconds']:g} s with "
        f"{sizes['handshake_loops']} loops, a fresh token (user) each time",
        "fanout": f"burst fan-out {sizes['fanout_messages']:,} messages to "
        f"{sizes['fanout_subscribers']:,} subscribers at once",
        "rooms": f"rooms {sizes['rooms_connections']:,} connections, "
        f"{sizes['rooms_channels']:,} channels, {sizes['rooms_rate']:,.0f} messages/s for "
        f"{sizes['rooms_seconds']:g} s after {sizes['rooms_warmup_s']:g} s of warm-up",
    }
    lines += [
        "",
        "Sizes: "
        + "; ".join(described[b] for b in report["benchmarks"])
        + f"; payloads {sizes['payload_bytes']} B.",
    ]
    if backbone:
        lines.append(
            "The Switchboard edge's backbone nats-server is not in its figures: in rooms it "
            f"used {cell(backbone)} µs per delivery on top."
        )
    behind = [r for r in report["runs"] if not r["problems"] and kept_up(r) is False]
    if behind:
        offered = behind[0]["figures"]["offered_deliveries_per_s"]
        reps: dict[str, list[str]] = {}
        for r in behind:
            reps.setdefault(LABELS[r["target"]], []).append(str(r["repetition"]))
        names = [f"{t} (repetition {', '.join(sorted(n))})" for t, n in sorted(reps.items())]
        lines.append(
            f"Did not keep up with the offered {offered:,.0f} deliveries/s (received < 95 %; "
            f"its latency is then the backlog, not the server's pace): {', '.join(names)}."
        )
    others = [
        r["other_cores"]
        for r in report["runs"]
        if r["other_cores"] is not None and not r["problems"]
    ]
    incomplete = [r for r in report["runs"] if r["problems"]]
    if others:
        lines.append(
            "Other processes on the machine used "
            f"{min(others):.2f} to {max(others):.2f} cores during the measurements "
            f"(median {statistics.median(others):.2f}) of the {os.cpu_count()}."
        )
    for run in incomplete:
        lines.append(
            f"Left out (incomplete): {run['benchmark']} / {LABELS[run['target']]} "
            f"repetition {run['repetition']}: {'; '.join(run['problems'])[:300]}."
        )
    lines.append(f"Raw results: `{report['results_path']}`.")
    return "\n".join(lines)


def kept_up(run: dict[str, Any]) -> bool | None:
    """Whether a paced run received at least 95 % of the deliveries/s it was offered."""
    offered = run["figures"].get("offered_deliveries_per_s")
    received = run["figures"].get("deliveries_per_s")
    if not offered or received is None:
        return None
    return bool(received >= 0.95 * offered)


def write_docs(path: Path, block: str) -> None:
    """Replace what is between the markers of `path` with `block`."""
    text = path.read_text()
    start, end = text.find(START_MARK), text.find(END_MARK)
    if start < 0 or end < 0 or end < start:
        raise BenchError(f"{path} has no '{START_MARK}' ... '{END_MARK}' section to write into")
    path.write_text(text[: start + len(START_MARK)] + "\n" + block + "\n" + text[end:])


# --------------------------------------------------------------------------- main


def rederive(report: dict[str, Any]) -> dict[str, Any]:
    """An earlier run's figures, problems and summary under this version's rules."""
    for run in report["runs"]:
        if "loadgen" in run:
            run["figures"], run["problems"] = derive(run["benchmark"], run["loadgen"])
            run["other_cores"] = other_cores(run["loadgen"]) or run.get("other_cores")
    report["summary"] = summarize(report["runs"])
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition, no docs")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; --quick: 1)")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated; also {', '.join(EXTRA_TARGETS)} (two edges on one backbone)",
    )
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="JSON directory")
    parser.add_argument("--docs", default=str(DOCS), help="markdown file with the markers")
    parser.add_argument("--no-docs", action="store_true", help="do not write the docs")
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="measure nothing: redo the tables of an earlier compare-*.json (and the docs)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, help="max s to wait for an idle machine (default 10; quick 0)"
    )
    for name, value in asdict(Sizes()).items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(value),
            help=f"default {value} (quick: {getattr(QUICK, name)})",
        )
    args = parser.parse_args(argv)
    args.targets = _choices(parser, "--targets", args.targets, TARGETS + EXTRA_TARGETS)
    args.benchmarks = _choices(parser, "--benchmarks", args.benchmarks, BENCHMARKS)
    base = QUICK if args.quick else Sizes()
    overrides = {k: getattr(args, k) for k in asdict(base) if getattr(args, k, None) is not None}
    for key, value in overrides.items():
        if value <= 0:
            parser.error(f"--{key.replace('_', '-')} must be > 0, got {value}")
    args.sizes = Sizes(**(asdict(base) | overrides))
    if args.sizes.rooms_channels > args.sizes.rooms_connections:
        parser.error("--rooms-channels must not be more than --rooms-connections")
    args.reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 10.0
    args.write_docs = not (args.quick or args.no_docs)
    if args.render is not None and not Path(args.render).is_file():
        parser.error(f"--render: {args.render} is not a file")
    return args


def _choices(
    parser: argparse.ArgumentParser, flag: str, value: str, allowed: tuple[str, ...]
) -> list[str]:
    picked = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in picked if v not in allowed]
    if unknown or not picked:
        parser.error(f"{flag}: {unknown or value!r} not among {', '.join(allowed)}")
    return [v for v in allowed if v in picked]  # canonical order


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so the `finally` blocks stop every server we started."""

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def start_target(name: str, tmp: Path, sizes: Sizes, centrifugo: Path | None) -> Running:
    if name in ("switchboard", "switchboard-x2"):
        most = max(sizes.idle_connections, sizes.rooms_connections, sizes.fanout_subscribers)
        edges = 2 if name == "switchboard-x2" else 1
        return peers.start_switchboard(tmp, max_connections=most + 1000, edges=edges)
    if name == "nats":
        return peers.start_nats(tmp)
    assert centrifugo is not None
    return peers.start_centrifugo(tmp, centrifugo)


def measure_one(
    args: argparse.Namespace,
    rep: int,
    bench: str,
    target: str,
    tmp: Path,
    loadgen: Path,
    centrifugo: Path | None,
) -> dict[str, Any]:
    """Start `target` fresh, run one benchmark against it, stop it: the run's record."""
    busy = wait_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
    work = tmp / f"{rep}-{bench}-{target}"
    work.mkdir()
    running = start_target(target, work, args.sizes, centrifugo)
    try:
        report = run_loadgen(loadgen, loadgen_args(bench, running, args.sizes, f"{rep}"), 900)
        running.check_alive()
    finally:
        running.stop()
    figures, problems = derive(bench, report)
    return {
        "repetition": rep,
        "benchmark": bench,
        "target": target,
        "busy_cores_before": busy,
        "other_cores": other_cores(report),
        "figures": figures,
        "problems": problems,
        "loadgen": report,
    }


def measure_all(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    nofile = raise_nofile()
    loadgen = peers.loadgen_binary()
    centrifugo = peers.centrifugo_binary() if "centrifugo" in args.targets else None
    sizes: Sizes = args.sizes
    runs: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="sb-bench-compare-"))
    log(f"nofile soft limit {nofile}; logs in {tmp}")
    for rep in range(1, args.reps + 1):
        for bench in args.benchmarks:
            shift = (rep - 1) % len(args.targets)
            for target in args.targets[shift:] + args.targets[:shift]:
                try:
                    run = measure_one(args, rep, bench, target, tmp, loadgen, centrifugo)
                except BenchError as exc:  # one failed run does not void the others
                    run = {"repetition": rep, "benchmark": bench, "target": target}
                    run |= {"figures": {}, "problems": [str(exc)], "other_cores": None}
                runs.append(run)
                shown = ", ".join(
                    f"{k}={fmt(v)}" for k, v in run["figures"].items() if v is not None
                )
                problems = run["problems"]
                log(
                    f"[{rep}/{args.reps}] {bench:<10} {target:<11} {shown}"
                    + (f"  INCOMPLETE: {'; '.join(problems)[:200]}" if problems else "")
                )
    if not any(run["problems"] for run in runs):
        shutil.rmtree(tmp, ignore_errors=True)  # kept (logs) when something failed
    name = f"compare-{started.strftime('%Y%m%dT%H%M%SZ')}"
    return {
        "benchmark": "compare",
        "name": name,
        "started_utc": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "repetitions": args.reps,
        "targets": args.targets,
        "benchmarks": args.benchmarks,
        "sizes": asdict(sizes),
        "centrifugo": peers.CENTRIFUGO_VERSION if centrifugo else None,
        "machine": machine_info(),
        "git": git_info(),
        "runs": runs,
        "summary": summarize(runs),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.render is not None:
        report = rederive(json.loads(Path(args.render).read_text()))
    else:
        try:
            with interruptible():
                report = measure_all(args, log)
        except KeyboardInterrupt:
            log("interrupted; every server started was stopped")
            return 130
        except BenchError as exc:
            log(f"error: {exc}")
            return 1
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{report['name']}.json"
        report["results_path"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        path.write_text(json.dumps(report, indent=1) + "\n")
        log(f"results: {path}")
    block = markdown(report)
    print(block)
    if args.write_docs:
        try:
            write_docs(Path(args.docs), block)
        except BenchError as exc:
            log(f"error: {exc}")
            return 1
        log(f"tables written to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
