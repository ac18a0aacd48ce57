"""The preStop drain's pod-local secret: the edge writes it, `switchboard drain` sends it.

`POST /v1/drain` must come from inside the pod. A loopback peer address proves
nothing once a sidecar proxy or service mesh forwards outside traffic over
loopback, so the edge also wants a random secret that it writes at start to a
file only its own user can read (mode 0600, in the container's own temp dir,
which the preStop hook shares).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

HEADER = "Sb-Drain-Secret"


def secret_path(port: int, configured: Path | None = None) -> Path:
    """The configured file, else one per edge port in the temp dir."""
    if configured is not None:
        return configured
    return Path(tempfile.gettempdir()) / f"switchboard-edge-{port}.drain"


def write_secret(path: Path) -> str:
    """A fresh secret in a new 0600 file (never through a planted file or symlink)."""
    secret = secrets.token_urlsafe(32)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret)
    return secret


def remove_secret(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def start_local_drain(port: int, secret_file: Path) -> int:
    """POST /v1/drain on this pod's edge with the secret it wrote; exit 0 even when the
    edge is gone (SIGTERM follows anyway), 1 when the edge refuses."""
    try:
        secret = secret_file.read_text().strip()
    except OSError as exc:
        print(f"drain not started: no secret at {secret_file}: {exc}", file=sys.stderr)
        return 0
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/drain", method="POST", headers={HEADER: secret}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            print(json.loads(response.read()))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"drain refused: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # Nothing to drain if the edge is already gone; SIGTERM follows anyway.
        print(f"drain not started: {exc}", file=sys.stderr)
        return 0
