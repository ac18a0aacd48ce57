"""Credentials and Origin are checked before the 101: refusals are plain HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from switchboard.client import Client
from switchboard.contract.tokens import mint_token
from tests.conftest import Edge, EdgeFactory, token


async def refused(url: str, **kwargs: object) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as exc:
        await connect(url, **kwargs)  # type: ignore[arg-type]
    return exc.value.response.status_code, exc.value.response.body.decode()


def http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def test_no_token_is_401(edge1: Edge) -> None:
    assert await refused(edge1.ws_url, subprotocols=["switchboard.v1"]) == (
        401,
        "missing credentials\n",
    )


async def test_expired_and_forged_tokens_are_401(edge1: Edge) -> None:
    expired = token("alice", ttl_s=-60)
    assert await refused(edge1.ws_url, subprotocols=["switchboard.v1", f"bearer.{expired}"]) == (
        401,
        "token expired\n",
    )
    forged = mint_token("not-the-cluster-secret-at-all-really", "alice")
    assert await refused(
        edge1.ws_url, additional_headers={"Authorization": f"Bearer {forged}"}
    ) == (401, "invalid token\n")


async def test_bad_origin_is_403(edge1: Edge) -> None:
    good = token("alice")
    status, body = await refused(
        edge1.ws_url,
        subprotocols=["switchboard.v1", f"bearer.{good}"],
        origin="http://evil.example",
    )
    assert (status, body) == (403, "origin not allowed\n")
    client = await Client.connect(edge1.ws_url, token=good, origin="http://allowed.example")
    await client.close()


async def test_subprotocol_is_selected_and_token_never_echoed(edge1: Edge) -> None:
    client = await Client.connect(edge1.ws_url, token=token("alice"))
    assert client.ws.subprotocol == "switchboard.v1"
    assert client.ws.response is not None
    assert client.ws.response.headers["Sec-WebSocket-Protocol"] == "switchboard.v1"
    await client.close()


async def test_ticket_works_once_on_either_edge(edge1: Edge, edge2: Edge) -> None:
    def mint() -> str:
        status, body = http(
            "POST", f"{edge1.http_url}/v1/tickets", {"Authorization": f"Bearer {token('alice')}"}
        )
        assert status == 201, body
        answer = json.loads(body)
        assert answer["expires_in"] == 30
        return str(answer["ticket"])

    ticket = await asyncio.to_thread(mint)
    client = await Client.connect(edge2.ws_url, ticket=ticket)  # redeemed on the other edge
    assert client.welcome["user"] == "alice"
    await client.close()
    for edge in (edge1, edge2):
        assert await refused(f"{edge.ws_url}?ticket={ticket}") == (401, "unknown or used ticket\n")
    second = await asyncio.to_thread(mint)
    await (await Client.connect(edge1.ws_url, ticket=second)).close()


async def test_ticket_endpoint_refusals(edge1: Edge) -> None:
    url = f"{edge1.http_url}/v1/tickets"
    assert await asyncio.to_thread(http, "POST", url) == (
        401,
        "missing Authorization: Bearer <JWT>\n",
    )
    assert await asyncio.to_thread(http, "POST", url, {"Authorization": "Bearer nope"}) == (
        401,
        "invalid token\n",
    )
    assert (await asyncio.to_thread(http, "GET", url))[0] == 405
    preflight = await asyncio.to_thread(http, "OPTIONS", url, {"Origin": "http://allowed.example"})
    assert preflight[0] == 204
    assert await refused(f"{edge1.ws_url}?ticket=never-issued") == (401, "malformed ticket\n")


async def test_health_endpoints_and_unknown_paths(edge1: Edge) -> None:
    """Health on the admin port; the client port knows /v1/* and the demo page only."""
    assert await asyncio.to_thread(http, "GET", f"{edge1.admin_url}/healthz") == (200, "ok\n")
    assert await asyncio.to_thread(http, "GET", f"{edge1.admin_url}/readyz") == (200, "ready\n")
    assert (await asyncio.to_thread(http, "GET", f"{edge1.http_url}/nope"))[0] == 404
    status, page = await asyncio.to_thread(http, "GET", f"{edge1.http_url}/")
    assert status == 200
    assert "Switchboard demo chat" in page


async def test_connection_cap_is_503_and_new_connection_rate_is_429(
    edge_factory: EdgeFactory,
) -> None:
    capped = edge_factory.start("edge-cap", max_connections="2")
    held = [await Client.connect(capped.ws_url, token=token(f"u{i}")) for i in range(2)]
    with pytest.raises(InvalidStatus) as full:
        await connect(capped.ws_url, additional_headers={"Authorization": f"Bearer {token()}"})
    assert full.value.response.status_code == 503
    assert full.value.response.headers["Retry-After"] == "5"
    for client in held:
        await client.close()

    throttled = edge_factory.start("edge-429", new_connections_per_s="1", new_connections_burst="3")
    statuses = []
    retry_after = set()
    for _ in range(6):
        try:
            await (await Client.connect(throttled.ws_url, token=token())).close()
            statuses.append(101)
        except InvalidStatus as exc:
            statuses.append(exc.response.status_code)
            retry_after.add(exc.response.headers["Retry-After"])
    assert statuses[:3] == [101, 101, 101]
    assert 429 in statuses[3:]
    assert retry_after == {"1"}
