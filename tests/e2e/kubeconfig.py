"""An aiohttp session that authenticates like kubectl would, from a kubeconfig file."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
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
