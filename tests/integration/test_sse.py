"""The fallback transport (DESIGN §8, issue 17) against real edges and nats-server, with a
real HTTP client (aiohttp): `GET /v1/sse` streams and `POST /v1/messages`.

Recovery with `Last-Event-ID` after a cut, a drain handed over to another edge with the
resume token, a shed whose streams recover elsewhere by `Last-Event-ID`, a reader that
stops reading evicted, a proxy that drops idle responses kept from doing so by the
comments, and every refusal as an HTTP status with a JSON body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from switchboard.cli.natsserver import NatsServer
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import channel_cli, scrape_metrics, wait_for

CHANNELS = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: ssehist}
spec:
  history: {size: 1000, ttl: 1h}
"""


@dataclass
class Event:
    kind: str
    id: str | None
    data: dict[str, Any]
    retry: int | None = None


class EventReader:
    """Reads `text/event-stream` as the SSE spec says (fields, blank-line dispatch,
    comments): what an `EventSource` would see, plus the comments it would skip."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments = 0
        self.last_id: str | None = None

    async def next(self, timeout: float = 10.0) -> Event:
        fields: dict[str, str] = {}
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data:
                        if "id" in fields:
                            self.last_id = fields["id"]
                        retry = fields.get("retry")
                        return Event(
                            fields.get("event", "message"),
                            fields.get("id"),
                            json.loads("\n".join(data)),
                            int(retry) if retry else None,
                        )
                    fields.clear()
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value

    async def until(self, kind: str, timeout: float = 10.0) -> Event:
        async with asyncio.timeout(timeout):
            while (event := await self.next(timeout)).kind != kind:
                pass
        return event


def auth(sub: str = "alice", **claims: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


async def open_stream(
    http: aiohttp.ClientSession,
    edge: Edge,
    *channels: str,
    headers: dict[str, str] | None = None,
    query: str = "",
) -> EventReader:
    params = "&".join(f"channel={c}" for c in channels) + query
    response = await http.get(
        f"{edge.http_url}/v1/sse?{params}",
        headers=headers if headers is not None else auth(),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
    )
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return EventReader(response)


async def post(
    http: aiohttp.ClientSession, edge: Edge, message: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    async with http.post(
        f"{edge.http_url}/v1/messages",
        data=body,
        headers=headers if headers is not None else auth(),
    ) as response:
        return response.status, json.loads(await response.read())


async def knows_history(http: aiohttp.ClientSession, edge: Edge, channel: str) -> None:
    """Wait until a new edge has read the channel configuration (a publish is stored)."""
    message = {"type": "publish", "payload": {"channel": channel, "data": "probe"}}
    async with asyncio.timeout(10):
        while "offset" not in (await post(http, edge, message, auth("probe")))[1]["payload"]:
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def history(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    assert await asyncio.to_thread(channel_cli, nats_server, "apply", "-f", "-", stdin=CHANNELS)
    nc = await nats.connect(nats_server.url)
    await asyncio.sleep(0.5)  # the edges have read the config
    yield nc
    await nc.close()
    await asyncio.to_thread(channel_cli, nats_server, "delete", "ssehist")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_last_event_id_recovers_a_cut_stream_without_loss_or_repeat(
    history: NatsClient, edge1: Edge, http: aiohttp.ClientSession
) -> None:
    """Publishes (through `POST /v1/messages`) never stop while the stream is cut twice;
    each reconnect with `Last-Event-ID` continues exactly after the last event read."""
    total = 300
    stream = await open_stream(http, edge1, "ssehist:cut")
    welcome = await stream.next()
    assert welcome.kind == "welcome" and welcome.data["payload"]["user"] == "alice"
    ack = await stream.next()
    assert ack.kind == "ack" and ack.data["payload"]["channel"] == "ssehist:cut"
    assert ack.id is not None  # the position from which a reconnect recovers

    published: list[int] = []

    async def publish() -> None:
        for n in range(total):
            status, answer = await post(
                http,
                edge1,
                {"type": "publish", "id": str(n), "payload": {"channel": "ssehist:cut", "data": n}},
            )
            assert status == 200, answer
            assert answer["type"] == "ack" and answer["id"] == str(n)
            published.append(answer["payload"]["offset"])
            await asyncio.sleep(0.002)

    publisher = asyncio.create_task(publish())
    seen: list[int] = []
    for cut_after in (60, 150):
        while len(seen) < cut_after:
            event = await stream.next()
            if event.kind == "event":
                seen.append(event.data["payload"]["data"])
        last_id = stream.last_id
        assert last_id is not None
        stream.response.close()  # the cut: whatever was in flight is lost with it
        await asyncio.sleep(0.2)
        stream = await open_stream(
            http, edge1, "ssehist:cut", headers=auth() | {"Last-Event-ID": last_id}
        )
        assert (await stream.next()).kind == "welcome"
        ack = await stream.next()
        assert ack.data["payload"]["recovered"] is True
    await publisher
    while len(seen) < total:
        event = await stream.next()
        if event.kind == "event":
            seen.append(event.data["payload"]["data"])
    assert seen == list(range(total))  # 0 lost, 0 duplicated, in order
    assert len(set(published)) == total
    stream.response.close()


async def test_post_messages_answers_as_the_websocket_does(
    history: NatsClient, edge1: Edge, http: aiohttp.ClientSession
) -> None:
    async def answer_rpc(msg: Msg) -> None:
        await msg.respond(json.dumps({"echo": json.loads(msg.data)}).encode())

    sub = await history.subscribe("sb.rpc.sse.echo", queue="echo", cb=answer_rpc)
    await history.flush()
    status, answer = await post(
        http, edge1, {"type": "rpc", "id": "r1", "payload": {"method": "sse.echo", "data": [1]}}
    )
    assert (status, answer) == (
        200,
        {"type": "rpc_response", "id": "r1", "payload": {"data": {"echo": [1]}}},
    )
    await sub.unsubscribe()
    status, answer = await post(
        http, edge1, {"type": "rpc", "id": "r2", "payload": {"method": "nobody.here", "data": 1}}
    )
    assert status == 404 and answer["payload"]["code"] == "not_found"
    fresh = token("alice", ttl_s=7200)
    status, answer = await post(
        http, edge1, {"type": "refresh", "id": "t", "payload": {"token": fresh}}
    )
    assert status == 200 and answer["type"] == "ack" and "expires_at" in answer["payload"]
    status, answer = await post(
        http, edge1, {"type": "presence", "id": "p", "payload": {"channel": "ssehist:x"}}
    )
    assert status == 403 and answer["payload"]["code"] == "not_enabled"
    status, answer = await post(
        http, edge1, {"type": "subscribe", "id": "s", "payload": {"channel": "a"}}
    )
    assert status == 400 and "GET /v1/sse" in answer["payload"]["message"]
    status, answer = await post(http, edge1, b"{not json")
    assert status == 400 and answer["payload"]["code"] == "bad_request"
    status, answer = await post(
        http, edge1, {"type": "publish", "payload": {"channel": "x"}}, headers={}
    )
    assert status == 401 and answer["payload"]["code"] == "unauthorized"
    forbidden = auth("bob", publish=["other:*"])
    status, answer = await post(
        http, edge1, {"type": "publish", "payload": {"channel": "ssehist:x", "data": 1}}, forbidden
    )
    assert status == 403 and answer["payload"]["code"] == "forbidden"
    async with http.post(
        f"{edge1.http_url}/v1/messages", data=b"x" * 70_000, headers=auth()
    ) as response:
        assert response.status == 413
        assert "at most 65536" in await response.text()


async def test_post_messages_share_the_users_rate_limit(
    edge_factory: EdgeFactory, http: aiohttp.ClientSession
) -> None:
    edge = edge_factory.start("edge-sse-rate", rate_per_s="1", rate_burst="3", abuse_errors="100")
    message = {"type": "publish", "payload": {"channel": "free:x", "data": 1}}
    statuses = [(await post(http, edge, message, auth("carol")))[0] for _ in range(5)]
    assert statuses[:3] == [200, 200, 200]
    assert statuses[3:] == [429, 429]  # one bucket for all of carol's requests
    assert (await post(http, edge, message, auth("dave")))[0] == 200  # not dave's
    counted = await asyncio.to_thread(scrape_metrics, edge)
    assert counted['sb_edge_posted_messages_total{status="429"}'] == 2


async def test_refusals_are_http_statuses_with_a_json_body(
    history: NatsClient, edge1: Edge, http: aiohttp.ClientSession
) -> None:
    async def refused(path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with http.get(f"{edge1.http_url}{path}", headers=headers) as response:
            assert response.headers["Content-Type"] == "application/json"
            return response.status, await response.json()

    status, body = await refused("/v1/sse?channel=a", {})
    assert status == 401 and body["payload"]["code"] == "unauthorized"
    status, body = await refused("/v1/sse?channel=bad..name", auth())
    assert status == 400 and "invalid channel name" in body["payload"]["message"]
    status, body = await refused("/v1/sse?channel=a", auth() | {"Last-Event-ID": "nonsense"})
    assert status == 400 and "Last-Event-ID" in body["payload"]["message"]
    status, body = await refused("/v1/sse?channel=secret:x", auth("eve", channels=["public:*"]))
    assert status == 403 and body["payload"]["code"] == "forbidden"
    status, body = await refused("/v1/sse?channel=a", auth() | {"Origin": "http://evil.example"})
    assert status == 403
    # a ticket, as EventSource (which cannot set headers) uses it; single-use
    async with http.post(f"{edge1.http_url}/v1/tickets", headers=auth("tom")) as response:
        ticket = (await response.json())["ticket"]
    stream = await open_stream(http, edge1, "public:t", headers={}, query=f"&ticket={ticket}")
    assert (await stream.next()).data["payload"]["user"] == "tom"
    stream.response.close()
    status, body = await refused(f"/v1/sse?channel=public:t&ticket={ticket}", {})
    assert status == 401 and "used ticket" in body["payload"]["message"]


async def test_a_full_edge_refuses_streams_with_503(
    edge_factory: EdgeFactory, http: aiohttp.ClientSession
) -> None:
    edge = edge_factory.start("edge-sse-full", max_connections="1")
    first = await open_stream(http, edge, "a")
    async with http.get(f"{edge.http_url}/v1/sse?channel=a", headers=auth()) as response:
        assert response.status == 503 and response.headers["Retry-After"] == "5"
        assert (await response.json())["payload"] == {
            "code": "unavailable",
            "message": "edge is full",
            "retryable": True,
        }
    counted = await asyncio.to_thread(scrape_metrics, edge)
    assert counted["sb_edge_connections"] == 1 and counted["sb_edge_sse_streams"] == 1
    assert counted['sb_edge_sse_refusals_total{status="503"}'] == 1
    first.response.close()
    await wait_for(lambda: scrape_metrics(edge)["sb_edge_sse_streams"] == 0)


async def test_a_drained_stream_resumes_on_another_edge_without_loss(
    history: NatsClient, edge_factory: EdgeFactory, edge2: Edge, http: aiohttp.ClientSession
) -> None:
    edge = edge_factory.start("edge-sse-drain", reconnect_jitter_ms="300")
    await knows_history(http, edge, "ssehist:drain")
    js = history.jetstream()
    stream = await open_stream(http, edge, "ssehist:drain", "plain")
    await stream.until("ack")
    await stream.until("ack")
    for n in range(20):
        await js.publish("sb.ch.ssehist.drain", json.dumps(n).encode())
    seen = [(await stream.until("event")).data["payload"]["data"] for _ in range(20)]
    nc = await nats.connect(edge_factory.nats.url_for("operator"))
    reply = await nc.request("sb.edge.edge-sse-drain.ctl", b'{"command": "drain"}', timeout=5)
    assert json.loads(reply.data)["ok"] is True
    for n in range(20, 40):  # published while the stream is moved
        await js.publish("sb.ch.ssehist.drain", json.dumps(n).encode())
    while (event := await stream.next()).kind != "reconnect":
        if event.kind == "event":
            seen.append(event.data["payload"]["data"])
    assert event.retry == event.data["payload"]["after_ms"] <= 300  # EventSource's wait
    resume = event.data["payload"]["resume_token"]
    closing = await stream.next()
    assert closing.kind == "close" and closing.data["payload"]["code"] == 1001
    with pytest.raises(EOFError):
        await stream.next()
    await nc.close()
    moved = await open_stream(http, edge2, headers={}, query=f"resume={resume}")
    assert (await moved.next()).kind == "welcome"
    acks = [(await moved.until("ack")).data["payload"] for _ in range(2)]
    assert {a["channel"] for a in acks} == {"ssehist:drain", "plain"}
    while len(seen) < 40:
        try:
            seen.append((await moved.until("event")).data["payload"]["data"])
        except TimeoutError:
            raise AssertionError((seen, acks)) from None
    assert seen == list(range(40))
    moved.response.close()


async def test_a_stream_that_is_not_read_is_evicted(
    history: NatsClient, edge_factory: EdgeFactory, http: aiohttp.ClientSession
) -> None:
    edge = edge_factory.start("edge-sse-slow", outbox_max_bytes="65536", slow_consumer_grace_s="1")
    stream = await open_stream(http, edge, "flood")
    await stream.until("ack")
    big = json.dumps("x" * 30_000).encode()
    for _ in range(200):  # ~6 MB: more than socket buffers and the outbox hold
        await history.publish("sb.ch.flood", big)
    await history.flush()
    await wait_for(lambda: scrape_metrics(edge)["sb_edge_slow_consumer_evictions_total"] == 1, 10)
    await wait_for(lambda: scrape_metrics(edge)["sb_edge_sse_streams"] == 0, 10)
    assert scrape_metrics(edge)['sb_edge_closes_total{code="1013"}'] == 1
    stream.response.close()


class IdleDroppingProxy:
    """A TCP proxy that closes a connection when the server has sent nothing for
    `idle_s`, as load balancers and buffering proxies do with quiet responses."""

    def __init__(self, upstream_port: int, idle_s: float) -> None:
        self.upstream_port = upstream_port
        self.idle_s = idle_s
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def upward() -> None:
            while data := await client_r.read(65536):
                up_w.write(data)

        async def downward() -> None:
            while True:
                try:
                    data = await asyncio.wait_for(up_r.read(65536), self.idle_s)
                except TimeoutError:
                    self.dropped += 1
                    return
                if not data:
                    return
                client_w.write(data)

        tasks = [asyncio.create_task(upward()), asyncio.create_task(downward())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        client_w.close()
        up_w.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


async def test_comments_keep_a_stream_alive_through_a_proxy_that_drops_idle_ones(
    edge_factory: EdgeFactory, edge1: Edge, http: aiohttp.ClientSession
) -> None:
    """The proxy drops a response quiet for 2 s; an edge that comments every 0.5 s (the
    15 s default scaled down with the proxy's 20 s) keeps its stream through 6 s of
    silence, while edge-1 (15 s) is dropped."""
    kept = edge_factory.start("edge-sse-keepalive", sse_keepalive_s="0.5")
    for edge, kept_alive in ((kept, True), (edge1, False)):
        proxy = IdleDroppingProxy(int(edge.http_url.rsplit(":", 1)[1]), idle_s=2.0)
        port = await proxy.start()
        response = await http.get(
            f"http://127.0.0.1:{port}/v1/sse?channel=quiet:{edge.name}",
            headers=auth(),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        stream = EventReader(response)
        await stream.until("ack")
        if kept_alive:
            with pytest.raises(TimeoutError):  # 6 s without an event...
                await stream.next(timeout=6)
            assert proxy.dropped == 0 and stream.comments >= 8  # ...but never idle
            message = {"type": "publish", "payload": {"channel": f"quiet:{edge.name}", "data": 1}}
            assert (await post(http, edge, message))[0] == 200
            assert (await stream.until("event")).data["payload"]["data"] == 1  # still through
        else:
            with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                await stream.next(timeout=6)
            assert proxy.dropped == 1 and stream.comments == 0
        response.close()
        await proxy.stop()


async def test_a_stream_ends_with_close_4001_when_its_token_expires(
    edge1: Edge, http: aiohttp.ClientSession
) -> None:
    """No `refresh` reaches a stream: at `exp` it ends as a WebSocket would (4001)."""
    stream = await open_stream(http, edge1, "short", headers=auth("brief", ttl_s=2))
    welcome = await stream.next()
    assert welcome.kind == "welcome"
    started = time.monotonic()
    closing = await stream.until("close", timeout=15)
    assert closing.data["payload"] == {"code": 4001, "reason": "token expired"}
    assert time.monotonic() - started < 10  # exp (2 s) + leeway (5 s) + a sweep
    with pytest.raises(EOFError):
        await stream.next()


async def test_a_shed_moves_sse_streams_that_recover_by_last_event_id_elsewhere(
    history: NatsClient, edge_factory: EdgeFactory, http: aiohttp.ClientSession
) -> None:
    """A shed ends SSE streams as a drain does (`reconnect` whose `retry:` is its
    `after_ms`, then close 1001, then the end of the response); each comes back as an
    EventSource would, after `retry` ms with `Last-Event-ID`, here on the edge that did
    not shed, and misses and repeats nothing while publishes never stop. The streams
    not shed miss nothing either."""
    hot = edge_factory.start("edge-sse-hot", reconnect_jitter_ms="300")
    cold = edge_factory.start("edge-sse-cold")
    channel, subject, total = "ssehist:shed", "sb.ch.ssehist.shed", 200
    streams = []
    for i in range(6):  # oldest first: the shed takes the newest
        stream = await open_stream(http, hot, channel, headers=auth(f"shed{i}"))
        assert (await stream.next()).kind == "welcome"
        assert (await stream.until("ack")).data["payload"]["offset"] is not None
        streams.append(stream)
    published = 0

    async def publish() -> None:
        nonlocal published
        js = history.jetstream()
        for n in range(total):
            await js.publish(subject, json.dumps(n).encode())
            published += 1
            await asyncio.sleep(0.01)

    moves: dict[int, Event] = {}
    landed: dict[int, str] = {}

    async def follow(i: int, stream: EventReader) -> list[int]:
        seen: list[int] = []
        while len(seen) < total:
            event = await stream.next(15)
            if event.kind == "event":
                seen.append(event.data["payload"]["data"])
            elif event.kind == "reconnect":
                moves[i] = event
                closing = await stream.next()
                assert (closing.kind, closing.data["payload"]["code"]) == ("close", 1001)
                with pytest.raises(EOFError):
                    await stream.next()
                stream.response.close()
                assert event.retry is not None
                await asyncio.sleep(event.retry / 1000)  # EventSource waits `retry`
                if i == 5:  # its shed resume token is refused by the edge that shed it
                    token_query = f"resume={event.data['payload']['resume_token']}"
                    async with http.get(f"{hot.http_url}/v1/sse?{token_query}") as refused:
                        assert (refused.status, refused.headers["Retry-After"]) == (503, "1")
                        assert "shedding" in (await refused.json())["payload"]["message"]
                assert stream.last_id is not None
                headers = auth(f"shed{i}") | {"Last-Event-ID": stream.last_id}
                stream = await open_stream(http, cold, channel, headers=headers)
                landed[i] = (await stream.next()).data["payload"]["node"]
                assert (await stream.until("ack")).data["payload"]["recovered"] is True
        stream.response.close()
        return seen

    publisher = asyncio.create_task(publish())
    followers = [asyncio.create_task(follow(i, s)) for i, s in enumerate(streams)]
    await wait_for(lambda: published >= 50)
    nc = await nats.connect(edge_factory.nats.url_for("operator"))  # playing the operator
    body = {"command": "shed", "connections": 4, "reconnects_per_second": 10}
    reply = await nc.request("sb.edge.edge-sse-hot.ctl", json.dumps(body).encode(), timeout=5)
    assert json.loads(reply.data) == {"ok": True, "connections": 4}
    await nc.close()
    async with asyncio.timeout(30):
        seen = await asyncio.gather(*followers)
    await publisher
    assert all(s == list(range(total)) for s in seen), [len(s) for s in seen]  # 0 lost, 0 twice
    assert sorted(moves) == [2, 3, 4, 5]  # the newest four; the two oldest stayed
    for event in moves.values():
        payload = event.data["payload"]
        assert payload["reason"] == "rebalance"
        assert event.retry == payload["after_ms"] <= 300
    assert landed == {i: "edge-sse-cold" for i in (2, 3, 4, 5)}
