"""Credential edge cases (issue 18 item 6), against real edges and a real nats-server:
resume tokens only as `?resume=`, ticket strings checked before any lookup, a ticket
redeemed once however many race for it, time claims that must be numbers, and a
preStop drain that needs the pod-local secret."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client, SwitchboardError
from switchboard.contract.localdrain import HEADER, secret_path
from switchboard.contract.resume import mint_resume
from switchboard.contract.tokens import Claims
from tests.conftest import SECRET, Edge, EdgeFactory, token
from tests.integration.helpers import scrape_metrics, wait_for
from tests.integration.test_refusals_in_band import ORIGIN, closed_in_band

RESUME_AS_BEARER = "a resume token is accepted only as ?resume="


def http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def upgrade(url: str, **kwargs: Any) -> tuple[int, str]:
    """101 (connection closed again at once) or the refusal's status and body."""
    kwargs.setdefault("subprotocols", ["switchboard.v1"])
    try:
        ws = await connect(url, open_timeout=10, **kwargs)
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.body.decode()
    await ws.close()
    return 101, ""


def resume_token(sub: str = "alice") -> str:
    """Minted exactly as an edge mints them during a drain (same cluster secret)."""
    return mint_resume(SECRET, Claims(sub, time.time() + 3600), [], ttl_s=60)


async def mint_ticket(edge: Edge, jwt_token: str) -> str:
    status, body = await asyncio.to_thread(
        http, "POST", f"{edge.http_url}/v1/tickets", {"Authorization": f"Bearer {jwt_token}"}
    )
    assert status == 201, body
    return str(json.loads(body)["ticket"])


# -- resume tokens: `?resume=` only --------------------------------------------------


async def test_resume_token_is_refused_as_bearer_and_for_a_ticket(edge1: Edge) -> None:
    resume = resume_token()
    subprotocol = {"subprotocols": ["switchboard.v1", f"bearer.{resume}"]}
    header = {"additional_headers": {"Authorization": f"Bearer {resume}"}}
    for kwargs in (subprotocol, header):
        assert await upgrade(edge1.ws_url, **kwargs) == (401, f"{RESUME_AS_BEARER}\n")
    status, body = await asyncio.to_thread(
        http, "POST", f"{edge1.http_url}/v1/tickets", {"Authorization": f"Bearer {resume}"}
    )
    assert (status, body) == (401, f"{RESUME_AS_BEARER}\n")
    client = await Client.connect(edge1.ws_url, token=token("alice"))
    with pytest.raises(SwitchboardError) as refused:
        await client.refresh(resume)
    assert (refused.value.code, refused.value.message) == ("unauthorized", RESUME_AS_BEARER)
    await client.close()
    # ... and it is still good for what it is for.
    resumed = await Client.connect(edge1.ws_url, resume=resume)
    assert resumed.welcome["user"] == "alice"
    await resumed.close()


async def test_a_list_audience_with_the_resume_audience_is_refused_too(edge1: Edge) -> None:
    body = {"sub": "alice", "exp": int(time.time()) + 600, "aud": ["app", "switchboard-resume"]}
    forged = jwt.encode(body, SECRET, algorithm="HS256")
    assert await upgrade(edge1.ws_url, subprotocols=["switchboard.v1", f"bearer.{forged}"]) == (
        401,
        f"{RESUME_AS_BEARER}\n",
    )


# -- tickets: shape first, single use under a race ------------------------------------


@pytest.mark.parametrize(
    "ticket",
    ["*", ">", "a b", "a.b", "x" * 31, "x" * 33, "A" * 31 + "*", "A" * 31 + ">", "é" * 32],
)
async def test_malformed_tickets_are_401_without_a_lookup(edge1: Edge, ticket: str) -> None:
    from urllib.parse import quote

    url = f"{edge1.ws_url}?ticket={quote(ticket)}"
    assert await upgrade(url) == (401, "malformed ticket\n")


async def test_a_well_formed_unknown_ticket_is_401(edge1: Edge) -> None:
    assert await upgrade(f"{edge1.ws_url}?ticket={'A' * 32}") == (401, "unknown or used ticket\n")


async def test_racing_redemptions_admit_one_and_refuse_the_rest_with_401(
    edge1: Edge, edge2: Edge
) -> None:
    """Eight clients on two edges race for each ticket: one 101, seven 401, never 503."""
    for _ in range(5):
        ticket = await mint_ticket(edge1, token("alice"))
        results = await asyncio.gather(
            *(upgrade(f"{edge.ws_url}?ticket={ticket}") for edge in (edge1, edge2) * 4)
        )
        assert sorted(results) == [(101, "")] + [(401, "unknown or used ticket\n")] * 7


async def test_503_only_when_the_ticket_store_really_is_unavailable(tmp_path: Any) -> None:
    """A private nats-server is stopped under an edge: minting and redeeming answer 503
    (1013 `retry after 1000` in band), while a malformed ticket is still a 401."""
    nats = NatsServer(store_dir=str(tmp_path / "nats"), auth=True).start()
    edges = EdgeFactory(nats, str(tmp_path))
    try:
        edge = edges.start("ticket-store-down")
        ticket = await mint_ticket(edge, token("alice"))
        nats.stop()
        await wait_for(lambda: scrape_metrics(edge)["sb_edge_nats_connected"] == 0)
        url = f"{edge.ws_url}?ticket={ticket}"
        assert await upgrade(url) == (503, "ticket store unavailable\n")
        assert await closed_in_band(url, origin=ORIGIN) == (1013, "retry after 1000")
        assert await upgrade(f"{edge.ws_url}?ticket=a*b") == (401, "malformed ticket\n")
        status, body = await asyncio.to_thread(
            http, "POST", f"{edge.http_url}/v1/tickets", {"Authorization": f"Bearer {token()}"}
        )
        assert (status, body) == (503, "ticket store unavailable\n")
    finally:
        edges.stop_all()
        nats.stop()


# -- time claims are numbers --------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": "{exp}"}, "claim 'exp' must be a number"),
        ({"exp": "{exp}", "nbf": "0"}, "claim 'exp' must be a number"),
        ({"nbf": "0"}, "claim 'nbf' must be a number"),
        ({"iat": "0"}, "claim 'iat' must be a number"),
        ({"exp": True}, "token expired"),
    ],
)
async def test_time_claims_must_be_numbers(
    edge1: Edge, claims: dict[str, Any], message: str
) -> None:
    exp = int(time.time()) + 600
    body: dict[str, Any] = {"sub": "alice", "exp": exp}
    body |= {k: v.format(exp=exp) if isinstance(v, str) else v for k, v in claims.items()}
    forged = jwt.encode(body, SECRET, algorithm="HS256")
    assert await upgrade(edge1.ws_url, subprotocols=["switchboard.v1", f"bearer.{forged}"]) == (
        401,
        f"{message}\n",
    )


# -- the preStop drain needs the pod-local secret -------------------------------------


def drain_command(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard", "drain", "--port", str(port), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "SB_EDGE_DRAIN_SECRET_FILE"},
    )


async def test_drain_from_loopback_needs_the_secret(edge1: Edge, tmp_path: Any) -> None:
    url = f"{edge1.http_url}/v1/drain"
    path = secret_path(edge1.port)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    refused = (403, "drain needs the pod's drain secret (switchboard drain)\n")
    assert await asyncio.to_thread(http, "POST", url) == refused
    assert await asyncio.to_thread(http, "POST", url, {HEADER: "guess"}) == refused
    assert await asyncio.to_thread(http, "POST", url, {HEADER: path.read_text()[:-1]}) == refused
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret")
    result = await asyncio.to_thread(drain_command, edge1.port, "--secret-file", str(wrong))
    assert result.returncode == 1
    assert "drain refused: 403" in result.stderr
    # Nothing started: the edge still takes connections.
    assert await asyncio.to_thread(http, "GET", f"{edge1.admin_url}/readyz") == (200, "ready\n")
    await (await Client.connect(edge1.ws_url, token=token())).close()


async def test_drain_secret_file_setting_and_cleanup(
    edge_factory: EdgeFactory, tmp_path: Any
) -> None:
    path = tmp_path / "drain-secret"
    edge = edge_factory.start("drain-secret-edge", drain_secret_file=str(path))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        default = secret_path(edge.port)
        # The setting replaces the default: this edge wrote no secret there. (A file at
        # the default can be an earlier edge's on the same port, killed before it could
        # remove it: it holds another secret, and would answer the drain below with 403.)
        assert not default.exists() or default.read_text() != path.read_text()
        default.unlink(missing_ok=True)
        missing = await asyncio.to_thread(drain_command, edge.port)  # looks in the default
        assert missing.returncode == 0  # a preStop hook never blocks the pod's stop ...
        assert "no secret at" in missing.stderr  # ... but says why nothing happened
        result = await asyncio.to_thread(drain_command, edge.port, "--secret-file", str(path))
        assert result.returncode == 0, result.stderr
        assert "'draining': True" in result.stdout
    finally:
        edge.stop()
    assert not path.exists()  # removed when the edge stops
