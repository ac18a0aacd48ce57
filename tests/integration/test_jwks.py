"""Token keys from a JWKS URL: a real edge against a real HTTP server whose key set
rotates (RS256 and ES256), without restarting the edge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from switchboard.cli.natsserver import wait_for_port
from switchboard.client import Client
from tests.conftest import Edge, EdgeFactory
from tests.integration.helpers import wait_for

RSA_1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_1 = ec.generate_private_key(ec.SECP256R1())
KEYS: dict[str, Any] = {"rsa-1": RSA_1, "rsa-2": RSA_2, "ec-1": EC_1}
ALGORITHM = {"rsa-1": "RS256", "rsa-2": "RS256", "ec-1": "ES256"}


def jwk(kid: str) -> dict[str, Any]:
    private = KEYS[kid]
    algorithm = RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else ECAlgorithm
    entry: dict[str, Any] = algorithm.to_jwk(private.public_key(), as_dict=True)
    return entry | {"kid": kid, "use": "sig", "alg": ALGORITHM[kid]}


def token(kid: str, sub: str = "alice", *, key: str | None = None) -> str:
    """A fresh token (its own `jti`: never one the edge verified before)."""
    claims = {"sub": sub, "exp": int(time.time()) + 600, "jti": str(time.monotonic_ns())}
    private = KEYS[key or kid]
    return jwt.encode(claims, private, algorithm=ALGORITHM[key or kid], headers={"kid": kid})


class IdP:
    """A local HTTP server serving /jwks.json; the key set and its health change live."""

    def __init__(self, kids: list[str]) -> None:
        self.kids = list(kids)
        self.down = False
        self.hits = 0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.hits += 1
                if self.path != "/jwks.json" or idp.down:
                    self.send_error(503 if idp.down else 404)
                    return
                body = json.dumps({"keys": [jwk(kid) for kid in idp.kids]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    @contextlib.contextmanager
    def running(self) -> Iterator[IdP]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


async def welcomed(edge: Edge, tok: str) -> bool:
    client = await Client.connect(edge.ws_url, token=tok)
    await client.close()
    return True


async def refused(edge: Edge, tok: str) -> int:
    """The HTTP status of an upgrade refused before the 101 (no `Origin`)."""
    with pytest.raises(websockets.InvalidStatus) as raised:
        await websockets.connect(
            edge.ws_url,
            subprotocols=[websockets.Subprotocol("switchboard.v1")],
            additional_headers={"Authorization": f"Bearer {tok}"},
        )
    return raised.value.response.status_code


async def accepted(edge: Edge, tok: str) -> bool:
    try:
        return await welcomed(edge, tok)
    except websockets.InvalidStatus:
        return False


def ready(edge: Edge) -> int:
    """`/readyz` on the admin port (which opens just after the client port)."""
    wait_for_port(edge.admin_port, 20)
    try:
        with urllib.request.urlopen(f"{edge.admin_url}/readyz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def eventually(check: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)


async def test_keys_rotate_without_a_restart(edge_factory: EdgeFactory) -> None:
    """The IdP adds a key and later drops the old one; the edge, reading the set every
    second, accepts the new key's tokens and refuses the old key's, cached or not."""
    with IdP(["rsa-1", "ec-1"]).running() as idp:
        edge = edge_factory.start(
            "jwks-rotate", jwt_jwks_url=idp.url, jwt_jwks_refresh_s="1", jwt_jwks_min_interval_s="1"
        )
        assert edge.process is not None
        pid = edge.process.pid
        try:
            assert ready(edge) == 200
            old = token("rsa-1")
            assert await welcomed(edge, old)  # RS256
            assert await welcomed(edge, token("ec-1", "bob"))  # ES256

            idp.kids = ["rsa-1", "rsa-2", "ec-1"]  # rotation starts: both keys listed
            await eventually(lambda: accepted(edge, token("rsa-2")))
            assert await welcomed(edge, old)  # the old key works until it is removed
            assert await welcomed(edge, token("rsa-1"))

            idp.kids = ["rsa-2", "ec-1"]  # the old key is withdrawn
            await eventually(lambda: _refused(edge, token("rsa-1")))
            assert await refused(edge, old) == 401  # verified before, refused now
            assert await welcomed(edge, token("rsa-2"))
            assert await welcomed(edge, token("ec-1"))
            # a token signed by another key under a listed kid
            assert await refused(edge, token("rsa-2", key="rsa-1")) == 401
            assert edge.process.poll() is None and edge.process.pid == pid  # no restart
        finally:
            edge.stop()


async def _refused(edge: Edge, tok: str) -> bool:
    return not await accepted(edge, tok)


async def test_unknown_kids_are_refused_without_hammering_the_idp(
    edge_factory: EdgeFactory,
) -> None:
    """An unknown kid makes the edge read the set at once (a key the IdP just added
    works on first sight); a flood of made-up kids is answered 401, with at most one
    read per interval; with the IdP down, the keys held keep working."""
    interval = 2.0
    with IdP(["rsa-1", "ec-1"]).running() as idp:
        edge = edge_factory.start(
            "jwks-flood",
            jwt_jwks_url=idp.url,
            jwt_jwks_refresh_s="300",  # no periodic read during the test
            jwt_jwks_min_interval_s=str(interval),
        )
        loaded_at = time.monotonic()
        try:
            assert idp.hits == 1  # read once at start, before listening
            idp.kids = ["rsa-1", "rsa-2", "ec-1"]
            await asyncio.sleep(max(0.0, loaded_at + interval - time.monotonic()))
            assert await welcomed(edge, token("rsa-2"))  # unseen kid: read at once
            assert idp.hits == 2

            started, before = time.monotonic(), idp.hits
            flood = [_with_kid(f"made-up-{n}") for n in range(60)]
            statuses = await asyncio.gather(*(refused(edge, t) for t in flood))
            assert set(statuses) == {401}  # refused before the upgrade, never a 5xx
            allowed = 1 + (time.monotonic() - started) / interval
            assert idp.hits - before <= allowed, (idp.hits - before, allowed)

            idp.down = True  # the IdP fails: what we hold keeps working
            await asyncio.sleep(interval)
            before = idp.hits
            assert await refused(edge, _with_kid("after-the-outage")) == 401
            assert idp.hits == before + 1  # it did try
            assert await welcomed(edge, token("rsa-2"))
            assert await welcomed(edge, token("ec-1"))
            assert await welcomed(edge, token("rsa-1"))
            assert ready(edge) == 200
        finally:
            edge.stop()


def _with_kid(kid: str) -> str:
    """A well-signed token under a kid the IdP never listed."""
    claims = {"sub": "mallory", "exp": int(time.time()) + 600, "jti": kid}
    return jwt.encode(claims, RSA_1, algorithm="RS256", headers={"kid": kid})


async def test_an_edge_started_while_the_idp_is_down_is_not_ready_until_it_answers(
    edge_factory: EdgeFactory,
) -> None:
    with IdP(["ec-1"]).running() as idp:
        idp.down = True
        edge = edge_factory.start("jwks-late", jwt_jwks_url=idp.url, jwt_jwks_min_interval_s="0.5")
        try:
            assert ready(edge) == 503
            assert await refused(edge, token("ec-1")) == 401
            idp.down = False
            await wait_for(lambda: ready(edge) == 200, timeout=15)
            assert await welcomed(edge, token("ec-1"))
        finally:
            edge.stop()


async def test_a_mounted_jwks_file_rotates_too(edge_factory: EdgeFactory, tmp_path: Path) -> None:
    """The same from a JWKS on disk, a file:// URL (a ConfigMap your tooling rewrites)."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk("rsa-1")]}))
    edge = edge_factory.start("jwks-file", jwt_jwks_url=path.as_uri(), jwt_jwks_refresh_s="1")
    try:
        assert await welcomed(edge, token("rsa-1"))
        assert await refused(edge, token("ec-1")) == 401
        path.write_text(json.dumps({"keys": [jwk("ec-1")]}))  # rotated in one step
        await eventually(lambda: accepted(edge, token("ec-1")))
        await eventually(lambda: _refused(edge, token("rsa-1")))
    finally:
        edge.stop()
