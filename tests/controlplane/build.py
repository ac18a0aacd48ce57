"""Build etcd, kube-apiserver and kube-controller-manager from Go modules, cached by version.

No Docker and no release downloads are available, so the control plane is compiled from
the Go module in ``go/`` (k8s.io/kubernetes with its staging modules pinned to their
published releases, plus the etcd server that release is tested against). The binaries go
to ``${SB_K8S_CACHE:-~/.cache/switchboard-k8s}/<k8s version>/``, outside the repository,
and are reused while go.mod, go.sum and the build flags are unchanged.

Run ``python -m tests.controlplane.build`` to build (or find) them ahead of a test run.
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

GO_MODULE_DIR = Path(__file__).resolve().parent / "go"

# Binary name -> Go package. One `go build` for all of them: they share most of their
# dependency graph, so one invocation compiles each shared package once.
PACKAGES: dict[str, str] = {
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
}

_STAMP = "build-info.json"


class BuildError(RuntimeError):
    """The Go build failed; the message holds the command and its output."""


def _module_version(module: str) -> str:
    """Read a required module's version from go/go.mod (the single source of truth)."""
    text = (GO_MODULE_DIR / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise BuildError(f"{module} is not required in {GO_MODULE_DIR / 'go.mod'}")
    return match.group(1)


def k8s_version() -> str:
    """The pinned Kubernetes release, e.g. ``v1.36.3``."""
    return _module_version("k8s.io/kubernetes")


def etcd_version() -> str:
    """The pinned etcd server release, e.g. ``v3.6.8``."""
    return _module_version("go.etcd.io/etcd/server/v3")


def cache_dir() -> Path:
    """Where binaries of the pinned version live: outside the repo, shared by checkouts."""
    root = os.environ.get("SB_K8S_CACHE") or str(Path.home() / ".cache" / "switchboard-k8s")
    return Path(root).expanduser() / k8s_version()


def _ldflags() -> str:
    """Strip symbols, and stamp the version like the official build does (else v0.0.0)."""
    version = k8s_version()
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _build_args(out_dir: Path) -> list[str]:
    go = shutil.which("go")
    if go is None:
        raise BuildError("`go` is not on PATH: Go >= 1.26 is needed to build the control plane")
    return [
        go,
        "build",
        "-trimpath",
        f"-ldflags={_ldflags()}",
        "-o",
        f"{out_dir}{os.sep}",
        *PACKAGES.values(),
    ]


def _build_env() -> dict[str, str]:
    """Static binaries; go.mod/go.sum are complete, so never let the build rewrite them."""
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    user_flags = [f for f in env.get("GOFLAGS", "").split() if not f.startswith("-mod=")]
    env["GOFLAGS"] = " ".join([*user_flags, "-mod=readonly"])
    return env


def _fingerprint() -> str:
    """What the cached binaries depend on: the module files and the build command."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((GO_MODULE_DIR / name).read_bytes())
    digest.update(_ldflags().encode())
    digest.update(" ".join(PACKAGES.values()).encode())
    return digest.hexdigest()


def _cached(target: Path, fingerprint: str) -> dict[str, Path] | None:
    try:
        stamp = json.loads((target / _STAMP).read_text())
    except (OSError, ValueError):
        return None
    paths = {name: target / name for name in PACKAGES}
    if stamp.get("fingerprint") != fingerprint:
        return None
    if not all(os.access(p, os.X_OK) for p in paths.values()):
        return None
    return paths


def _default_binary_name(package: str) -> str:
    """The file `go build -o dir/` writes: the last path element, minus a /vN suffix."""
    parts = package.split("/")
    if re.fullmatch(r"v\d+", parts[-1]) and len(parts) > 1:
        return parts[-2]
    return parts[-1]


def _build(target: Path, fingerprint: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target) as tmp:
        out = Path(tmp)
        cmd = _build_args(out)
        print(
            f"building the Kubernetes control plane {k8s_version()} into {target} "
            "(a cold build takes several minutes)",
            file=sys.stderr,
            flush=True,
        )
        started = time.monotonic()
        proc = subprocess.run(
            cmd,
            cwd=GO_MODULE_DIR,
            env=_build_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr)[-8000:]
            goflags = shlex.quote(_build_env()["GOFLAGS"])
            raise BuildError(
                f"go build failed (exit {proc.returncode}) in {GO_MODULE_DIR}:\n"
                f"  CGO_ENABLED=0 GOFLAGS={goflags} {shlex.join(cmd)}\n"
                f"{output}"
            )
        for name, package in PACKAGES.items():
            os.replace(out / _default_binary_name(package), target / name)
    stamp = {
        "fingerprint": fingerprint,
        "k8s_version": k8s_version(),
        "etcd_version": etcd_version(),
        "build_seconds": round(elapsed, 1),
    }
    (target / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    print(f"built the control plane in {elapsed:.0f}s", file=sys.stderr, flush=True)


def ensure_binaries() -> dict[str, Path]:
    """Return paths of etcd, kube-apiserver and kube-controller-manager, building if needed.

    A file lock serialises concurrent callers (parallel test sessions), so one builds and
    the others reuse its result; within a process the answer is memoised.
    """
    return dict(_ensure_binaries())


@functools.cache
def _ensure_binaries() -> dict[str, Path]:
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
        raise BuildError(f"the build finished but {target} does not hold all of {list(PACKAGES)}")
    return found


def main() -> int:
    """Build (or find) the binaries and print where they are."""
    started = time.monotonic()
    for name, path in ensure_binaries().items():
        print(f"{name}: {path}")
    print(f"ready in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
