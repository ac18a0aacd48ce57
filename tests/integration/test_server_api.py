"""The server API on the admin port (DESIGN §8) against two real edges and a real
nats-server with the role users: what a backend that speaks HTTP can do, and the
JSON error it gets for every bad request."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client, Closed
from switchboard.contract.resume import mint_resume
from switchboard.contract.tokens import Claims
from tests.conftest import SECRET, Edge, EdgeFactory, token
from tests.integration.helpers import channel_cli, next_event, wait_for
from tests.integration.test_credentials import http as http_call
from tests.integration.test_credentials import mint_ticket, upgrade
from tests.integration.test_refusals_in_band import ORIGIN, bearer, closed_in_band

KEY = "k-" + "x" * 30
CHANNELS = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: ledger}
spec: {history: {size: 100}}
---
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: lobby}
spec: {presence: true}
"""


@pytest.fixture(scope="module")
def api_edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Edge, Edge, Edge]]:
    """Two edges with a key, one without; their own NATS (with the role users)."""
    tmp = tmp_path_factory.mktemp("server-api")
    keys = Path(tmp) / "api-keys"
    keys.write_text(f"# rotated by hand\n{KEY}\n")
    nats = NatsServer(auth=True).start()
    factory = EdgeFactory(nats, str(tmp))
    channel_cli(nats, "apply", "-f", "-", stdin=CHANNELS)
    try:
        yield (
            factory.start("api-1", api_keys_file=str(keys)),
            factory.start("api-2", api_keys_file=str(keys)),
            factory.start("api-nokeys"),
        )
    finally:
        factory.stop_all()
        nats.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"apikey {KEY}"}) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, edge: Edge, method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, dict[str, Any]]:
    async with http.request(method, f"{edge.admin_url}{path}", json=body, **kw) as response:
        return response.status, await response.json()


SYNCS = itertools.count()


async def connected(edge: Edge, user: str, *channels: str) -> Client:
    """A client of `user` subscribed to `channels`, once its edge's interest in all of
    them is in NATS. The user's subject is subscribed unconfirmed (at once, in the
    handshake); a channel no one on that edge has subscribed yet is confirmed (a
    round trip to NATS), and NATS handles an edge's commands in order. An existing
    channel would not do: the edge has nothing to send (CI once lost a message so)."""
    client = await Client.connect(edge.ws_url, token=token(user))
    for channel in (*channels, f"sync-{next(SYNCS)}"):
        await client.subscribe(channel)
    return client


async def test_publish_reaches_subscribers_on_every_edge(
    api_edges: tuple[Edge, Edge, Edge], http: aiohttp.ClientSession
) -> None:
    api, other, _ = api_edges
    client = await connected(other, "alice", "news")
    status, body = await call(http, api, "POST", "/api/v1/publish", {"channel": "news", "data": 1})
    assert (status, body) == (200, {"channel": "news"})
    event = await next_event(client)
    assert event["payload"]["channel"] == "news" and event["payload"]["data"] == 1
    assert "from" not in event["payload"]  # the server, not a user
    await client.close()


async def test_history_publishes_answer_offsets_and_history_reads_them_back(
    api_edges: tuple[Edge, Edge, Edge], http: aiohttp.ClientSession
) -> None:
    api, _, _ = api_edges
    offsets = []
    for n in range(5):
        status, body = await call(
            http, api, "POST", "/api/v1/publish", {"channel": "ledger", "data": {"n": n}}
        )
        assert status == 200, body
        offsets.append(body["offset"])
    assert offsets == sorted(offsets) and len(set(offsets)) == 5
    again = {"channel": "ledger", "data": {"n": 4}, "msg_id": "ledger-4"}
    first = await call(http, api, "POST", "/api/v1/publish", again)
    assert (await call(http, api, "POST", "/api/v1/publish", again))[1]["offset"] == first[1][
        "offset"
    ]  # a repeated msg_id is stored once

    status, history = await call(
        http, api, "GET", f"/api/v1/channels/ledger/history?since={offsets[1]}&limit=2"
    )
    assert status == 200
    assert [e["offset"] for e in history["events"]] == offsets[2:4]
    assert [e["data"] for e in history["events"]] == [{"n": 2}, {"n": 3}]
    assert history["offset"] == first[1]["offset"] and history["epoch"] == first[1]["epoch"]
    status, whole = await call(http, api, "GET", "/api/v1/channels/ledger/history")
    assert [e["offset"] for e in whole["events"]][:5] == offsets

    status, body = await call(http, api, "GET", "/api/v1/channels/ledger/history?since=-1")
    assert status == 400 and "'since'" in body["error"]["message"]
    status, body = await call(http, api, "GET", "/api/v1/channels/news/history")
    assert (status, body["error"]["code"]) == (404, "not_enabled")


async def test_broadcast_publishes_to_each_channel_once(
    api_edges: tuple[Edge, Edge, Edge], http: aiohttp.ClientSession
) -> None:
    api, other, _ = api_edges
    client = await connected(other, "bob", "b1", "b2")
    body = {"channels": ["b1", "b2", "b1"], "data": "hello"}
    status, answer = await call(http, api, "POST", "/api/v1/broadcast", body)
    assert status == 200 and [r["channel"] for r in answer["results"]] == ["b1", "b2"]
    seen = {(await next_event(client))["payload"]["channel"] for _ in range(2)}
    assert seen == {"b1", "b2"}
    with pytest.raises(TimeoutError):
        await next_event(client, timeout=0.3)  # b1 once, not twice

    status, answer = await call(
        http, api, "POST", "/api/v1/broadcast", {"channels": ["ok", "not ok"], "data": 1}
    )
    assert status == 400 and "'channels[1]'" in answer["error"]["message"]
    await client.close()


async def test_a_user_gets_messages_on_every_connection_and_is_disconnected_everywhere(
    api_edges: tuple[Edge, Edge, Edge], http: aiohttp.ClientSession
) -> None:
    api, other, _ = api_edges
    here, there = await connected(api, "carol"), await connected(other, "carol")
    status, body = await call(http, api, "POST", "/api/v1/users/carol/messages", {"data": "hi"})
    assert (status, body) == (200, {"user": "carol"})
    for client in (here, there):
        event = await next_event(client)
        assert event["payload"]["channel"] == "#carol" and event["payload"]["data"] == "hi"

    bystander = await connected(other, "dave")
    status, body = await call(http, api, "POST", "/api/v1/users/carol/disconnect", {})
    assert (status, body) == (200, {"user": "carol", "code": 4003})
    assert await here.wait_closed() == 4003
    assert await there.wait_closed() == 4003
    assert here.ws.close_reason == "revoked"
    assert bystander.close_code is None  # only carol

    status, body = await call(
        http, api, "POST", "/api/v1/users/dave/disconnect", {"code": 4100, "reason": "banned"}
    )
    assert status == 200
    assert await bystander.wait_closed() == 4100 and bystander.ws.close_reason == "banned"
    for bad in ({"code": 3000}, {"code": "4003"}, {"reason": "x" * 200}):
        status, body = await call(http, api, "POST", "/api/v1/users/dave/disconnect", bad)
        assert status == 400 and body["error"]["code"] == "bad_request", bad
    status, body = await call(http, api, "POST", "/api/v1/users/no%20one/messages", {"data": 1})
    assert status == 400 and "user id" in body["error"]["message"]


async def test_a_revoked_users_older_tokens_are_refused_on_every_edge(
    api_edges: tuple[Edge, Edge, Edge], http: aiohttp.ClientSession
) -> None:
    """DESIGN §2, §4: after `revoke`, the user's open connections close with 4003, and
    every credential of a token issued before it (the token itself, a ticket for it,
    a resume token an edge minted from it) gets 403, or 4003 in band, on every edge;
    a token issued afterwards works. The edges' NATS has the role users: the edge's
    role may write and read `sb_revoked`."""
    api, other, _ = api_edges
    old = token("gina")
    here = await Client.connect(api.ws_url, token=old)
    there = await Client.connect(other.ws_url, token=old)
    bystander = await connected(other, "hank")
    ticket = await mint_ticket(other, old)  # taken before the revocation
    resume = mint_resume(SECRET, Claims("gina", time.time() + 3600, iat=time.time()), [], ttl_s=60)

    status, body = await call(http, api, "POST", "/api/v1/users/gina/revoke", {})
    assert status == 200 and body["user"] == "gina", body
    before = body["before"]
    assert abs(before - time.time()) < 5
    for client in (here, there):
        assert await client.wait_closed() == 4003
        assert client.ws.close_reason == "token revoked"
    assert bystander.close_code is None  # only gina

    for edge in (api, other):
        assert await upgrade(edge.ws_url, subprotocols=bearer(old)) == (403, "token revoked\n")
        in_band = await closed_in_band(edge.ws_url, origin=ORIGIN, subprotocols=bearer(old))
        assert in_band == (4003, "token revoked")
        resumed = await upgrade(f"{edge.ws_url}?resume={resume}")
        assert resumed == (403, "token revoked\n")
        status, text = await asyncio.to_thread(
            http_call, "POST", f"{edge.http_url}/v1/tickets", {"Authorization": f"Bearer {old}"}
        )
        assert (status, text) == (403, "token revoked\n")
    assert await upgrade(f"{other.ws_url}?ticket={ticket}") == (403, "token revoked\n")

    while time.time() < before + 1:  # `iat` has whole seconds: one of the next second
        await asyncio.sleep(0.05)
    fresh = token("gina")
    for edge in (api, other):
        client = await Client.connect(edge.ws_url, token=fresh)
        assert client.welcome["user"] == "gina"
        await client.close()

    for bad in ({"before": "now"}, {"before": True}, {"before": time.time() + 3600}):
        status, body = await call(http, api, "POST", "/api/v1/users/gina/revoke", bad)
        assert status == 400 and "'before'" in body["error"]["message"], bad
    status, body = await call(http, api, "POST", "/api/v1/users/no%20one/revoke", {})
    assert status == 400 and "user id" in body["error"]["message"]
    await bystander.close()


async def test_presence_lists_users_where_presence_is_on(
    api_edges: tuple[Edge, Edge, Edge], http: aiohttp.ClientSession
) -> None:
    api, other, _ = api_edges
    client = await connected(other, "erin", "lobby")

    async def users() -> list[str]:
        status, body = await call(http, api, "GET", "/api/v1/channels/lobby/presence")
        assert status == 200, body
        return list(body["users"])

    async with asyncio.timeout(5):
        while await users() != ["erin"]:
            await asyncio.sleep(0.05)
    status, body = await call(http, api, "GET", "/api/v1/channels/news/presence")
    assert (status, body["error"]["code"]) == (404, "not_enabled")
    await client.close()


async def test_every_bad_request_gets_a_json_error_naming_the_problem(
    api_edges: tuple[Edge, Edge, Edge], http: aiohttp.ClientSession
) -> None:
    api, _, no_keys = api_edges
    publish = f"{api.admin_url}/api/v1/publish"
    async with aiohttp.ClientSession() as anonymous:
        for headers in (
            {},
            {"Authorization": "apikey wrong-key-wrong-key"},
            {"Authorization": KEY},
        ):
            async with anonymous.post(publish, json={}, headers=headers) as response:
                assert response.status == 401
                assert (await response.json())["error"]["code"] == "unauthorized"
    status, body = await call(http, no_keys, "POST", "/api/v1/publish", {"channel": "a", "data": 1})
    assert (status, body["error"]["code"]) == (503, "not_enabled")

    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/api/v1/publish", {"channel": "a"}, 400, "missing field 'data'"),
        ("POST", "/api/v1/publish", {"channel": "a b", "data": 1}, 400, "'channel'"),
        ("POST", "/api/v1/publish", [1], 400, "JSON object"),
        ("POST", "/api/v1/publish", {"channel": "a", "data": 1, "msg_id": ""}, 400, "msg_id"),
        ("POST", "/api/v1/publish", {"channel": "a", "data": "x" * 20000}, 413, "allows"),
        ("POST", "/api/v1/broadcast", {"channels": [], "data": 1}, 400, "'channels'"),
        ("GET", "/api/v1/publish", None, 405, "GET"),
        ("POST", "/api/v1/nothing", {}, 404, "/api/v1/nothing"),
    ]
    for method, path, body, status, says in cases:
        got, answer = await call(http, api, method, path, body)
        assert got == status and says in answer["error"]["message"], (path, body, answer)
    async with http.post(publish, data=b"{not json") as response:
        assert response.status == 400
        assert "JSON object" in (await response.json())["error"]["message"]
    nested: Any = 1
    for _ in range(80):
        nested = [nested]
    got, answer = await call(http, api, "POST", "/api/v1/publish", {"channel": "a", "data": nested})
    assert got == 400 and "nested" in answer["error"]["message"]


async def test_health_readiness_and_metrics_are_on_the_admin_port_only(
    api_edges: tuple[Edge, Edge, Edge],
) -> None:
    """DESIGN §2: the client port serves only /v1/* (and the demo page); what a probe
    or Prometheus reads is on the admin port, which no client Service exposes."""
    api, _, _ = api_edges
    # The client port closes the connection after each plain HTTP answer.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for path, says in (("/healthz", "ok"), ("/readyz", "ready"), ("/metrics", "sb_edge_")):
            async with session.get(f"{api.admin_url}{path}") as response:
                assert response.status == 200 and says in await response.text(), path
            async with session.get(f"{api.http_url}{path}") as response:
                assert response.status == 404, path
                assert "sb_edge_" not in await response.text()
        # The server API is not on the client port either.
        async with session.get(
            f"{api.http_url}/api/v1/channels/lobby/presence",
            headers={"Authorization": f"apikey {KEY}"},
        ) as response:
            assert response.status == 404
        # ...while the client port still answers its own paths.
        async with session.post(f"{api.http_url}/v1/tickets") as response:
            assert response.status == 401


async def test_a_closed_client_is_not_told_twice(
    api_edges: tuple[Edge, Edge, Edge], http: aiohttp.ClientSession
) -> None:
    """A disconnect for a user with no connection anywhere is accepted and harmless."""
    api, _, _ = api_edges
    status, _ = await call(http, api, "POST", "/api/v1/users/nobody/disconnect", {})
    assert status == 200
    client = await connected(api, "frank")
    await call(http, api, "POST", "/api/v1/users/frank/disconnect", {})
    assert await client.wait_closed() == 4003
    with pytest.raises(Closed):
        await client.subscribe("x")
    await wait_for(lambda: client.close_code == 4003)
