"""What every benchmark module needs before it imports anything of the project: the
repository root on sys.path (so `python bench/<script>.py` finds it), the HS256
secret of the edge under test, the NATS prefix it runs with, and the results folder.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECRET = "bench-secret-that-is-long-enough-for-hs256"
PREFIX = "sb"  # the edge's default subject prefix
RESULTS = ROOT / "bench" / "results"

# What to undo at the end of a run, last first (see `_run.bench_run`).
Cleanup = list[Callable[[], object]]
