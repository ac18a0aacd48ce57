"""Running a benchmark: options, the two targets in turn with cleanup on any exit,
tables, and the JSON report."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _config import RESULTS, Cleanup
from _machine import LOADGEN_NOTE, machine_info, raise_nofile
from _targets import Target, start_reference, start_switchboard


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


MeasureTarget = Callable[[Target, argparse.Namespace, Cleanup], dict[str, Any]]


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
def bench_run(name: str) -> Iterator[tuple[str, Cleanup]]:
    """A temp dir and a cleanup list run in reverse on exit, Ctrl-C or SIGTERM."""

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # also when started in the background (SIG_IGN)
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix=f"sb-bench-{name}-")
    cleanup: Cleanup = []
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
