"""Build Jaeger v2 from the Go module proxy, cached by version, as the control plane is.

The module in ``jaeger/`` pins ``github.com/jaegertracing/jaeger`` as a Go tool (made with
``go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@v1.76.0``); ``go build`` of
``cmd/jaeger`` gives the single ``jaeger`` binary (the v2 all-in-one, an OpenTelemetry
Collector distribution: OTLP in over HTTP and gRPC, memory storage, the query API). It
goes to ``${SB_JAEGER_CACHE:-~/.cache/switchboard-jaeger}/<version>/`` and is reused while
go.mod, go.sum and the build flags are unchanged; a lock serialises parallel sessions.

Run ``python -m tests.tracing.build`` to build (or find) it ahead of a test run.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GO_MODULE_DIR = Path(__file__).resolve().parent / "jaeger"
MODULE = "github.com/jaegertracing/jaeger"
PACKAGE = f"{MODULE}/cmd/jaeger"
LDFLAGS = "-s -w"
_STAMP = "build-info.json"


class BuildError(RuntimeError):
    """The Go build failed; the message holds the command and its output."""


def jaeger_version() -> str:
    """The pinned Jaeger release, read from go.mod (the single source of truth)."""
    text = (GO_MODULE_DIR / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(MODULE)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise BuildError(f"{MODULE} is not required in {GO_MODULE_DIR / 'go.mod'}")
    return match.group(1)


def cache_dir() -> Path:
    root = os.environ.get("SB_JAEGER_CACHE") or str(Path.home() / ".cache" / "switchboard-jaeger")
    return Path(root).expanduser() / jaeger_version()


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((GO_MODULE_DIR / name).read_bytes())
    digest.update(f"{LDFLAGS} {PACKAGE}".encode())
    return digest.hexdigest()


def _cached(target: Path, fingerprint: str) -> Path | None:
    try:
        stamp = json.loads((target / _STAMP).read_text())
    except (OSError, ValueError):
        return None
    binary = target / "jaeger"
    if stamp.get("fingerprint") != fingerprint or not os.access(binary, os.X_OK):
        return None
    return binary


def _build(target: Path, fingerprint: str) -> None:
    go = shutil.which("go")
    if go is None:
        raise BuildError("`go` is not on PATH: Go >= 1.26 is needed to build Jaeger")
    target.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    user_flags = [f for f in env.get("GOFLAGS", "").split() if not f.startswith("-mod=")]
    env["GOFLAGS"] = " ".join([*user_flags, "-mod=readonly"])
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target) as tmp:
        cmd = [go, "build", "-trimpath", f"-ldflags={LDFLAGS}", "-o", f"{tmp}{os.sep}", PACKAGE]
        print(
            f"building Jaeger {jaeger_version()} into {target} (a cold build takes minutes)",
            file=sys.stderr,
            flush=True,
        )
        started = time.monotonic()
        proc = subprocess.run(
            cmd,
            cwd=GO_MODULE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            raise BuildError(
                f"go build failed (exit {proc.returncode}) in {GO_MODULE_DIR}:\n"
                f"  CGO_ENABLED=0 GOFLAGS={shlex.quote(env['GOFLAGS'])} {shlex.join(cmd)}\n"
                f"{(proc.stdout + proc.stderr)[-8000:]}"
            )
        os.replace(Path(tmp) / "jaeger", target / "jaeger")
    stamp = {
        "fingerprint": fingerprint,
        "jaeger_version": jaeger_version(),
        "build_seconds": round(elapsed, 1),
    }
    (target / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    print(f"built Jaeger in {elapsed:.0f}s", file=sys.stderr, flush=True)


def ensure_jaeger() -> Path:
    """The path of the `jaeger` binary, building it if needed (memoised per process)."""
    return _ensure_jaeger()


@functools.cache
def _ensure_jaeger() -> Path:
    target = cache_dir()
    fingerprint = _fingerprint()
    found = _cached(target, fingerprint)
    if found is not None:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _cached(target, fingerprint)
        if found is None:
            _build(target, fingerprint)
            found = _cached(target, fingerprint)
    if found is None:
        raise BuildError(f"the build finished but {target} holds no jaeger binary")
    return found


def main() -> int:
    started = time.monotonic()
    print(f"jaeger: {ensure_jaeger()}")
    print(f"ready in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
