"""Refusals a browser can see (DESIGN §2): with an allowed `Origin`, a refused upgrade is
answered 101 and closed at once with 4001 / 1013, before any frame; without `Origin`
it stays an HTTP status; `in_band_refusals` = `always` / `never` overrides both.

Real edge processes and real WebSocket clients. Each refusal is checked both ways.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from switchboard.client import Client, Closed
from switchboard.client.resilient import ResilientClient
from switchboard.contract.localdrain import HEADER, secret_path
from switchboard.contract.resume import mint_resume
from switchboard.contract.tokens import Claims, mint_token
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import edge_subjects, scrape_metrics, wait_for

ORIGIN = "http://allowed.example"
REFUSALS = "sb_edge_upgrade_refusals_total"


async def closed_in_band(url: str, **kwargs: Any) -> tuple[int, str]:
    """Connect (expecting 101 with `switchboard.v1`), then the close that follows at once:
    (code, reason). Fails if any frame arrives before the close."""
    kwargs.setdefault("subprotocols", ["switchboard.v1"])
    async with connect(url, open_timeout=5, **kwargs) as ws:
        assert ws.subprotocol == "switchboard.v1"
        try:
            frame = await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed:
            close = ws.protocol.close_rcvd
            if close is None:
                pytest.fail("the connection dropped without a close frame")
            return close.code, close.reason
    pytest.fail(f"a frame came before the close: {frame!r}")


async def refused_http(url: str, **kwargs: Any) -> tuple[int, str, str | None]:
    """(status, body, Retry-After) of an upgrade refused before 101."""
    kwargs.setdefault("subprotocols", ["switchboard.v1"])
    with pytest.raises(InvalidStatus) as exc:
        await connect(url, open_timeout=5, **kwargs)
    response = exc.value.response
    return response.status_code, response.body.decode(), response.headers.get("Retry-After")


def bearer(jwt: str) -> list[Any]:
    return ["switchboard.v1", f"bearer.{jwt}"]


def post(url: str, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(url, method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def refusals(edge: Edge) -> dict[str, float]:
    return {k: v for k, v in scrape_metrics(edge).items() if k.startswith(REFUSALS)}


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The edge's counters that changed (not its histograms or process metrics)."""
    return {
        k: v - before.get(k, 0)
        for k, v in after.items()
        if v != before.get(k, 0) and k.startswith("sb_edge_") and "_seconds" not in k
    }


def counted(status: int, via: str) -> str:
    return f'{REFUSALS}{{status="{status}",via="{via}"}}'


# -- credentials: 4001 with an allowed Origin, 401 without --------------------------------


async def test_credential_refusals_close_4001_with_origin_and_stay_401_without(
    edge1: Edge,
) -> None:
    expired = token("alice", ttl_s=-60)
    forged = mint_token("not-the-cluster-secret-at-all-really", "alice")
    resume = mint_resume("not-the-cluster-secret-at-all-really", Claims("alice", 2e9), [], ttl_s=60)
    cases: list[tuple[str, dict[str, Any], str]] = [
        (edge1.ws_url, {}, "missing credentials"),
        (edge1.ws_url, {"subprotocols": bearer(expired)}, "token expired"),
        (
            edge1.ws_url,
            {"additional_headers": {"Authorization": f"Bearer {forged}"}},
            "invalid token",
        ),
        (f"{edge1.ws_url}?ticket=never*issued", {}, "malformed ticket"),
        (f"{edge1.ws_url}?ticket={'A' * 32}", {}, "unknown or used ticket"),
        (f"{edge1.ws_url}?resume={resume}", {}, "invalid resume token"),
    ]
    before = refusals(edge1)
    for url, kwargs, reason in cases:
        assert await closed_in_band(url, origin=ORIGIN, **kwargs) == (4001, reason), reason
        assert await refused_http(url, **kwargs) == (401, f"{reason}\n", None), reason
    assert delta(before, refusals(edge1)) == {
        counted(401, "close"): len(cases),
        counted(401, "http"): len(cases),
    }


async def test_forbidden_origin_stays_http_403(edge1: Edge) -> None:
    for kwargs in ({}, {"subprotocols": bearer(token("alice"))}):
        status, body, _ = await refused_http(edge1.ws_url, origin="http://evil.example", **kwargs)
        assert (status, body) == (403, "origin not allowed\n")


async def test_python_client_raises_the_in_band_close(edge1: Edge) -> None:
    """`Client.connect` surfaces a refusal in band as `Closed(code, reason)` at once."""
    async with asyncio.timeout(3):  # not after `open_timeout` waiting for a welcome
        with pytest.raises(Closed) as closed:
            await Client.connect(edge1.ws_url, token=token("alice", ttl_s=-60), origin=ORIGIN)
    assert (closed.value.code, closed.value.reason) == (4001, "token expired")
    good = await Client.connect(edge1.ws_url, token=token("alice"), origin=ORIGIN)
    assert good.welcome["user"] == "alice"
    await good.close()
    with pytest.raises(Closed):  # a request on a closed connection: `Closed`, as ever
        await good.publish("chat:lobby", "too late")


# -- overload: 1013 "retry after <ms>" with Origin, 503/429 + Retry-After without ------


async def test_full_edge_closes_1013_and_refused_sockets_take_no_slot(
    edge_factory: EdgeFactory, nats_server: Any
) -> None:
    edge = edge_factory.start("inband-full", max_connections="1")
    try:
        held = await Client.connect(edge.ws_url, token=token("holder"))
        before = scrape_metrics(edge)
        for _ in range(5):
            assert await closed_in_band(
                edge.ws_url, origin=ORIGIN, subprotocols=bearer(token("bob"))
            ) == (1013, "retry after 5000")
        assert await refused_http(edge.ws_url, subprotocols=bearer(token("bob"))) == (
            503,
            "edge is full\n",
            "5",
        )
        after = scrape_metrics(edge)
        assert delta(before, after) == {counted(503, "close"): 5, counted(503, "http"): 1}
        handshakes = 'sb_edge_handshake_duration_seconds_count{result="refused"}'
        assert after[handshakes] - before[handshakes] == 6
        # Refused in band: no session, no user subject, not counted as a connection.
        assert after["sb_edge_connections"] == 1
        assert not any("user.bob" in s for s in edge_subjects(nats_server, "inband-full"))
        await held.close()
        await wait_for(lambda: scrape_metrics(edge)["sb_edge_connections"] == 0)
        # The slot is free again: the refused sockets never held it.
        client = await Client.connect(edge.ws_url, token=token("bob"), origin=ORIGIN)
        await client.close()
    finally:
        edge.stop()


async def test_over_the_rate_closes_1013_with_origin_and_stays_429_without(
    edge_factory: EdgeFactory,
) -> None:
    edge = edge_factory.start(
        "inband-rate", new_connections_per_s="0.01", new_connections_burst="1"
    )
    try:
        await (await Client.connect(edge.ws_url, token=token())).close()  # the one token
        assert await closed_in_band(edge.ws_url, origin=ORIGIN, subprotocols=bearer(token())) == (
            1013,
            "retry after 1000",
        )
        assert await refused_http(edge.ws_url, subprotocols=bearer(token())) == (
            429,
            "too many new connections\n",
            "1",
        )
        assert delta({}, refusals(edge)) == {counted(429, "close"): 1, counted(429, "http"): 1}
    finally:
        edge.stop()


async def test_draining_edge_closes_1013_with_origin_and_stays_503_without(
    edge_factory: EdgeFactory,
) -> None:
    edge = edge_factory.start("inband-draining")
    try:
        secret = secret_path(edge.port).read_text()
        answer = await asyncio.to_thread(post, f"{edge.http_url}/v1/drain", {HEADER: secret})
        assert answer["draining"] is True
        assert await closed_in_band(edge.ws_url, origin=ORIGIN, subprotocols=bearer(token())) == (
            1013,
            "retry after 1000",
        )
        assert await refused_http(edge.ws_url, subprotocols=bearer(token())) == (
            503,
            "edge is draining\n",
            "1",
        )
    finally:
        edge.stop()


# -- the setting: `always` refuses in band without Origin, `never` by HTTP with it ------


@pytest.fixture(scope="module")
def always_edge(edge_factory: EdgeFactory) -> Iterator[Edge]:
    edge = edge_factory.start("inband-always", in_band_refusals="always", max_connections="1")
    yield edge
    edge.stop()


async def test_always_closes_in_band_even_without_origin(always_edge: Edge) -> None:
    edge = always_edge
    assert await closed_in_band(edge.ws_url) == (4001, "missing credentials")
    assert await closed_in_band(edge.ws_url, subprotocols=bearer(token(ttl_s=-60))) == (
        4001,
        "token expired",
    )
    held = await Client.connect(edge.ws_url, token=token())
    assert await closed_in_band(edge.ws_url, subprotocols=bearer(token())) == (
        1013,
        "retry after 5000",
    )
    await held.close()
    # A forbidden Origin is still HTTP 403.
    status, _, _ = await refused_http(edge.ws_url, origin="http://evil.example")
    assert status == 403
    await wait_for(lambda: scrape_metrics(edge)["sb_edge_connections"] == 0)


async def test_resilient_client_takes_an_in_band_4001_as_a_new_token_request(
    always_edge: Edge,
) -> None:
    """Python clients send no Origin, but with `always` they see 4001 right after the
    upgrade: `ResilientClient` asks for a new token, as after an HTTP 401."""
    edge = always_edge
    await wait_for(lambda: scrape_metrics(edge)["sb_edge_connections"] == 0)
    tokens = [token("ann", ttl_s=-60), token("ann")]
    asked = 0

    async def next_token() -> str:
        nonlocal asked
        asked += 1
        return tokens[min(asked, len(tokens)) - 1]

    client = ResilientClient([edge.ws_url], next_token, sleep=lambda _s: asyncio.sleep(0))
    try:
        async with asyncio.timeout(10):
            await client.start()
        assert asked == 2
        assert client.failures == ["token expired"]
        assert client.client is not None and client.client.welcome["user"] == "ann"
    finally:
        await client.close()


async def test_never_answers_by_http_even_with_origin(edge_factory: EdgeFactory) -> None:
    edge = edge_factory.start("inband-never", in_band_refusals="never")
    try:
        assert await refused_http(edge.ws_url, origin=ORIGIN) == (
            401,
            "missing credentials\n",
            None,
        )
        assert await refused_http(
            edge.ws_url, origin=ORIGIN, subprotocols=bearer(token(ttl_s=-60))
        ) == (401, "token expired\n", None)
        assert delta({}, refusals(edge)) == {counted(401, "http"): 2}
    finally:
        edge.stop()
