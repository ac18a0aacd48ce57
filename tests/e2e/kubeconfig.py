"""An aiohttp session that authenticates like kubectl would, from a kubeconfig file;
and kubeconfigs whose credentials come from an exec plugin."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.operator.harness import ApiClient


def _current(config: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    entry = next(e for e in config[f"{kind}s"] if e["name"] == name)
    value: dict[str, Any] = entry[kind]
    return value


@contextlib.asynccontextmanager
async def api_client(kubeconfig: Path) -> AsyncIterator[ApiClient]:
    config = yaml.safe_load(await asyncio.to_thread(kubeconfig.read_text))
    context = _current(config, "context", config["current-context"])
    cluster = _current(config, "cluster", context["cluster"])
    user = _current(config, "user", context["user"])
    ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    ssl_context = ssl.create_default_context(cadata=ca)
    headers = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "client-certificate-data" in user:
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            ssl_context.load_cert_chain(cert, key)
        if "token" in user:
            headers["Authorization"] = f"Bearer {user['token']}"
        connector = aiohttp.TCPConnector(ssl=ssl_context)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            yield ApiClient(session, cluster["server"])


# An exec credential plugin, as EKS, GKE and AKS kubeconfigs use: a command that prints
# an ExecCredential. This one prints the token it was given (a ServiceAccount's) and
# appends a line to a file each time it runs, so tests can see that it did.
EXEC_PLUGIN = """\
import json, pathlib, sys
token, runs = sys.argv[1], pathlib.Path(sys.argv[2])
with runs.open("a") as out:
    out.write("ran\\n")
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": token},
}))
"""


def exec_plugin_kubeconfig(token_kubeconfig: Path, out_dir: Path) -> tuple[Path, Path]:
    """A kubeconfig for the same cluster whose user is an exec plugin handing out the
    token of `token_kubeconfig`; (its path, the file counting the plugin's runs)."""
    config = yaml.safe_load(token_kubeconfig.read_text())
    context = _current(config, "context", config["current-context"])
    token = _current(config, "user", context["user"])["token"]
    plugin, runs = out_dir / "exec-plugin.py", out_dir / "exec-plugin.runs"
    plugin.write_text(EXEC_PLUGIN)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin), token, str(runs)],
            "interactiveMode": "Never",
        }
    }
    for entry in config["users"]:
        if entry["name"] == context["user"]:
            entry["user"] = user
    path = out_dir / "exec.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path, runs
