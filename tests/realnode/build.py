"""Build the node's binaries from Go modules, cached next to the control plane's.

kubelet, kube-scheduler, kube-proxy and CoreDNS come from the control plane's Go module
(tests/controlplane/go), so every component is the same Kubernetes release and a build
reuses the control plane's compiled packages: CoreDNS is ``go/coredns``, a main with the
few plugins the cluster's Corefile uses (v1.13.2: its requirements raise none of the
module's versions). They go to
``${SB_K8S_CACHE:-~/.cache/switchboard-k8s}/<k8s version>/node/`` and are reused while the
module files and build flags are unchanged.

Run ``python -m tests.realnode.build`` to build (or find) them ahead of a test run.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.controlplane import build as cp

# Binary name (what `go build -o dir/` writes) -> Go package; one `go build` for all.
PACKAGES: dict[str, str] = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    "coredns": "switchboard.test/controlplane/coredns",
}
NAMES = tuple(PACKAGES)

_STAMP = "build-info.json"


def node_dir() -> Path:
    return cp.cache_dir() / "node"


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "coredns/main.go"):
        digest.update((cp.GO_MODULE_DIR / name).read_bytes())
    digest.update(cp._ldflags().encode())
    digest.update(" ".join(PACKAGES.values()).encode())
    return digest.hexdigest()


def _cached(target: Path, fingerprint: str) -> dict[str, Path] | None:
    try:
        stamp = json.loads((target / _STAMP).read_text())
    except (OSError, ValueError):
        return None
    paths = {name: target / name for name in NAMES}
    if stamp.get("fingerprint") != fingerprint:
        return None
    if not all(os.access(p, os.X_OK) for p in paths.values()):
        return None
    return paths


def _go(args: list[str], cwd: Path) -> None:
    go = shutil.which("go")
    if go is None:
        raise cp.BuildError("`go` is not on PATH: Go >= 1.26 is needed to build the node")
    cmd = [go, *args]
    env = cp._build_env()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise cp.BuildError(
            f"go build failed (exit {proc.returncode}) in {cwd}:\n"
            f"  CGO_ENABLED=0 GOFLAGS={shlex.quote(env['GOFLAGS'])} {shlex.join(cmd)}\n"
            f"{(proc.stdout + proc.stderr)[-8000:]}"
        )


def _build(target: Path, fingerprint: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    print(
        f"building kubelet, kube-scheduler, kube-proxy and CoreDNS into {target} "
        "(minutes when cold)",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target) as tmp:
        out = Path(tmp)
        flags = ["build", "-trimpath", f"-ldflags={cp._ldflags()}", "-o", f"{out}{os.sep}"]
        _go([*flags, *PACKAGES.values()], cp.GO_MODULE_DIR)
        for name in NAMES:
            os.replace(out / name, target / name)
    elapsed = time.monotonic() - started
    stamp = {"fingerprint": fingerprint, "build_seconds": round(elapsed, 1)}
    (target / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    print(f"built the node in {elapsed:.0f}s", file=sys.stderr, flush=True)


def ensure_node_binaries() -> dict[str, Path]:
    """Paths of kubelet, kube-scheduler, kube-proxy and coredns, built if needed."""
    return dict(_ensure())


@functools.cache
def _ensure() -> dict[str, Path]:
    target = node_dir()
    fingerprint = _fingerprint()
    found = _cached(target, fingerprint)
    if found is not None:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "node.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _cached(target, fingerprint)
        if found is None:
            _build(target, fingerprint)
            found = _cached(target, fingerprint)
    if found is None:
        raise cp.BuildError(f"the build finished but {target} does not hold all of {NAMES}")
    return found


def main() -> int:
    started = time.monotonic()
    for name, path in {**cp.ensure_binaries(), **ensure_node_binaries()}.items():
        print(f"{name}: {path}")
    print(f"ready in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
