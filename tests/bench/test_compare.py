"""The benchmark rig of issue 15 in a tiny smoke run: the Go load generator is built and
drives a real edge (behind a real nats-server) and nats-server's WebSocket listener
through bench/compare.py. The figures are checked for sanity only, never for speed.

Centrifugo is not built here (a cold `go install` of it takes minutes): its leg runs only
when the binary is already in the bench cache (`python bench/compare.py` builds it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPARE = ROOT / "bench" / "compare.py"
TINY = [
    "--quick",
    "--idle-connections=100",
    "--handshake-seconds=1",
    "--fanout-subscribers=50",
    "--fanout-messages=40",
    "--rooms-connections=100",
    "--rooms-channels=10",
    "--rooms-rate=200",
    "--rooms-seconds=1",
]


def _load(name: str) -> ModuleType:
    """A bench/ script as a module (bench/ is a folder of scripts, not a package)."""
    bench_dir = str(ROOT / "bench")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


compare = _load("compare")
peers: Any = compare.peers  # the module compare itself uses (one BenchError class)


def _need_go() -> None:
    """Go builds the load generator; skipped locally without it, never in CI."""
    try:
        peers.find_go()
    except peers.BenchError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


def _run_compare(tmp_path: Path, *args: str, timeout: float) -> dict[str, Any]:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(COMPARE), *TINY, f"--out={out}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (path,) = out.glob("compare-*.json")
    report: dict[str, Any] = json.loads(path.read_text())
    assert "| measure |" in proc.stdout  # the markdown block is printed
    return report


def _check_run(run: dict[str, Any]) -> None:
    """Sane figures: everything connected and arrived, CPU and memory were seen."""
    bench, figures = run["benchmark"], run["figures"]
    where = f"{bench}/{run['target']}: {run['problems']} {figures}"
    assert run["problems"] == [], where
    report = run["loadgen"]
    if bench == "idle":
        assert figures["connections_open"] == 100, where
        assert 0 < figures["kib_per_connection"] < 1000, where
    elif bench == "handshakes":
        assert report["handshakes"] > 0 and report["errors_total"] == 0, where
        assert figures["handshakes_per_cpu_s"] > 0, where
        assert report["latency_us"]["count"] == report["handshakes"], where
    else:
        assert report["deliveries"] == report["expected_deliveries"] > 0, where
        expected = 50 * 40 if bench == "fanout" else 200 * 10
        assert report["expected_deliveries"] == expected, where
        assert report["latency_us"]["count"] == report["deliveries"], where
        assert figures["p99_ms"] is not None and figures["p99_ms"] >= figures["p50_ms"], where
        assert figures["deliveries_per_frame"] >= 1, where
        if bench == "rooms":
            assert report["warmup_deliveries"] > 0, where  # warm-up is not measured


def test_loadgen_go_unit_tests() -> None:
    """The load generator's own tests: histogram, NATS stream parser, flag errors."""
    _need_go()
    proc = subprocess.run(
        [peers.find_go(), "test", "./..."],
        cwd=ROOT / "bench" / "loadgen",
        env=os.environ | {"GOFLAGS": "-mod=readonly"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.timeout(600)  # a cold build fetches the Go modules first
def test_tiny_comparison_of_edge_and_nats_server(tmp_path: Path) -> None:
    _need_go()
    report = _run_compare(tmp_path, "--targets=switchboard,nats", timeout=540)
    assert report["targets"] == ["switchboard", "nats"]
    assert report["centrifugo"] is None
    runs = report["runs"]
    assert {(r["benchmark"], r["target"]) for r in runs} == {
        (b, t) for b in compare.BENCHMARKS for t in ("switchboard", "nats")
    }
    for run in runs:
        _check_run(run)
    # the edge's backbone is measured on its own, and only for the edge
    for run in runs:
        if run["benchmark"] == "rooms":
            has_backbone = run["figures"]["backbone_us_per_delivery"] is not None
            assert has_backbone == (run["target"] == "switchboard")
    assert set(report["summary"]["rooms.p99_ms"]) == {"switchboard", "nats"}


@pytest.mark.timeout(300)
def test_tiny_rooms_over_two_edges(tmp_path: Path) -> None:
    """The opt-in target of two edge processes on one backbone (two 1-CPU pods):
    connections alternate between them (the load generator's own test), every delivery
    arrives, and the CPU of both edges is the server's."""
    _need_go()
    report = _run_compare(
        tmp_path, "--targets=switchboard-x2", "--benchmarks=idle,rooms", timeout=280
    )
    assert report["targets"] == ["switchboard-x2"]
    for run in report["runs"]:
        _check_run(run)
        if run["benchmark"] == "rooms":
            assert run["figures"]["backbone_us_per_delivery"] is not None
            assert run["loadgen"]["cpu"]["server"]["cpu_s"] > 0
    assert "Switchboard 2 edges" in compare.markdown(report)


@pytest.mark.timeout(300)
def test_tiny_run_against_centrifugo_when_cached(tmp_path: Path) -> None:
    _need_go()
    binary = peers.cache_dir() / "bin" / "centrifugo"
    if peers._module_version(binary) != peers.CENTRIFUGO_VERSION:
        pytest.skip(
            f"Centrifugo {peers.CENTRIFUGO_VERSION} not built in {binary.parent} "
            "(a cold build takes minutes: `python bench/compare.py --quick` builds it)"
        )
    report = _run_compare(tmp_path, "--targets=centrifugo", timeout=280)
    for run in report["runs"]:
        _check_run(run)


def test_bad_arguments_are_named() -> None:
    for args, named in [
        (["--targets=switchboard,redis"], "--targets"),
        (["--benchmarks=idle,latency"], "--benchmarks"),
        (["--reps=0"], "--reps"),
        (["--rooms-rate=0"], "--rooms-rate"),
        (["--rooms-connections=10", "--rooms-channels=20"], "--rooms-channels"),
        (["--render=/nonexistent/compare.json"], "--render"),
    ]:
        proc = subprocess.run(
            [sys.executable, str(COMPARE), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert named in proc.stderr, (args, proc.stderr)


def _synthetic_report() -> dict[str, Any]:
    def run(target: str, rep: int, value: float, problems: list[str] | None = None) -> Any:
        return {
            "repetition": rep,
            "benchmark": "rooms",
            "target": target,
            "figures": {"us_per_delivery": value, "p99_ms": value / 10},
            "problems": problems or [],
            "other_cores": 0.1,
        }

    runs = [run("switchboard", r, v) for r, v in ((1, 20.0), (2, 24.0), (3, 22.0))]
    runs[0]["figures"] |= {"deliveries_per_s": 940.0, "offered_deliveries_per_s": 1000.0}
    runs[1]["figures"] |= {"deliveries_per_s": 960.0, "offered_deliveries_per_s": 1000.0}
    runs += [run("centrifugo", r, v) for r, v in ((1, 10.0), (2, 11.0), (3, 12.0))]
    runs.append(run("centrifugo", 4, 99.0, ["3 of 100 deliveries missing"]))
    return {
        "name": "compare-test",
        "results_path": "bench/results/compare-test.json",
        "started_utc": "2026-11-30T00:00:00+00:00",
        "git": {"commit": "abcdef123456", "dirty_edge_or_switchboard": False},
        "repetitions": 3,
        "targets": ["switchboard", "centrifugo"],
        "benchmarks": ["rooms"],
        "sizes": compare.asdict(compare.Sizes()),
        "runs": runs,
        "summary": compare.summarize(runs),
    }


def test_table_has_min_median_max_and_ratios_and_leaves_out_incomplete_runs() -> None:
    block = compare.markdown(_synthetic_report())
    row = next(line for line in block.splitlines() if "server CPU µs per delivery" in line)
    # Switchboard 20/22/24, Centrifugo 10/11/12 (the incomplete 99 left out): ratio 2.00
    assert row.split(" | ")[1:] == ["20.0 / 22.0 / 24.0", "10.0 / 11.0 / 12.0", "2.00 |"]
    assert "Left out (incomplete): rooms / Centrifugo v6.9.1 repetition 4" in block
    assert "`abcdef1`" in block
    # 940 of 1,000 offered deliveries/s is behind; 960 is not
    assert "Did not keep up with the offered 1,000 deliveries/s" in block
    assert "Switchboard edge (repetition 1)." in block


def test_docs_markers_are_replaced_and_required(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# T\n\nbefore\n{compare.START_MARK}\nold\n{compare.END_MARK}\nafter\n")
    compare.write_docs(doc, "new table")
    compare.write_docs(doc, "newer table")
    assert doc.read_text() == (
        f"# T\n\nbefore\n{compare.START_MARK}\nnewer table\n{compare.END_MARK}\nafter\n"
    )
    doc.write_text("# no markers\n")
    with pytest.raises(peers.BenchError, match="bench:compare:start"):
        compare.write_docs(doc, "x")


def test_render_redoes_the_tables_of_a_saved_run(tmp_path: Path) -> None:
    """--render measures nothing: it rewrites the docs from an earlier JSON."""
    saved = tmp_path / "compare-test.json"
    saved.write_text(json.dumps(_synthetic_report()))
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"{compare.START_MARK}\n{compare.END_MARK}\n")
    assert compare.main(["--render", str(saved), "--docs", str(doc)]) == 0
    assert "| rooms: server CPU µs per delivery (lower is better) | 20.0 / 22.0 / 24.0" in (
        doc.read_text()
    )
