"""The browser SDK (clients/js) for tests: build it with the locked tools from npm."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "clients" / "js"
BUNDLE = JS_DIR / "dist" / "switchboard.min.js"
SHIPPED_BUNDLE = ROOT / "edge" / "static" / "switchboard.js"


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise RuntimeError("node is not installed (the browser SDK needs Node.js 20+)")
    return found


@functools.cache
def build_sdk() -> Path:
    """`npm run build` (tsc + esbuild), once per test session, from the current source.

    `make js` has run `npm ci` from the lock file."""
    if not (JS_DIR / "node_modules" / ".bin" / "tsc").exists():
        raise RuntimeError("clients/js/node_modules is missing: run `make js` (npm ci)")
    result = subprocess.run(
        ["npm", "run", "--silent", "build"],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"SDK build failed:\n{result.stdout}\n{result.stderr}")
    return BUNDLE
