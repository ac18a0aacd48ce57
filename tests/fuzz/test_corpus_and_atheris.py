"""The kept corpus, replayed; then atheris explores from it for a bounded time.

tests/fuzz/corpus holds hand-written seeds (`T…` client frames, `B…`/`S…`
backend bodies, `P…` presence frames: see target.py) and inputs atheris found
that reach new code, minimised with `-merge=1`. Every one must keep passing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.target import run_input

# a dev dependency wherever it has wheels (x86-64 Linux, CPython 3.11/3.12: CI's machine)
atheris = pytest.importorskip("atheris")

CORPUS = Path(__file__).parent / "corpus"
FUZZ_SECONDS = int(os.environ.get("SB_FUZZ_SECONDS", "30"))


def test_corpus_is_kept() -> None:
    names = {path.name[:1] for path in CORPUS.iterdir()}
    assert {"T", "B", "S", "P"} <= names  # readable seeds of every kind
    found = [p for p in CORPUS.iterdir() if len(p.name) == 40]  # atheris names them by sha1
    assert len(found) >= 50  # and the inputs atheris found that reach new code


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name[:40])
def test_corpus_input_keeps_every_promise(path: Path) -> None:
    run_input(path.read_bytes(), atheris.FuzzedDataProvider)


def test_atheris_finds_nothing_new_in_bounded_time(tmp_path: Path) -> None:
    """Coverage-guided run from the corpus; a crash leaves its input in tmp_path."""
    found = tmp_path / "found"
    found.mkdir()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.target",
            str(found),
            str(CORPUS),
            f"-max_total_time={FUZZ_SECONDS}",
            "-max_len=8192",
            "-timeout=10",
            "-rss_limit_mb=1024",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 60,
        cwd=Path(__file__).parents[2],
    )
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-"))]
    assert run.returncode == 0 and not crashes, run.stderr[-4000:]
    assert "stat::number_of_executed_units" in run.stderr  # it really ran
