"""The browser SDK in real headless Chromium against real edges and a real nats-server.

A page from the app's own origin (app_server.py) loads the shipped bundle and
subscribes to a history channel while a backend publishes 50 msg/s to it on NATS
(JetStream, with msg ids so a retried publish is stored once). Each scenario ends
with the page holding exactly what the backend got acked: none lost, none twice,
in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from nats.js.client import JetStreamContext

from switchboard.cli.natsserver import NatsServer
from switchboard.client import Client
from tests.browser.app_server import app_server
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import channel_cli

pytestmark = pytest.mark.timeout(180)

HISTORY = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: pagehist}
spec:
  history: {size: 5000, ttl: 10m}
"""


class Backend:
    """Publishes {"n": 0, 1, 2, …} at 50 msg/s with JetStream acks; retries what failed.

    It stops only after a publish was acked, so `acked` is exactly what was stored.
    """

    def __init__(self, js: JetStreamContext, subject: str) -> None:
        self.js = js
        self.subject = subject
        self.acked: list[int] = []
        self.failures = 0
        self._run_id = f"{time.time_ns()}"
        self._running = True
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while True:
            try:
                await self.js.publish(
                    self.subject,
                    b'{"n": %d}' % n,
                    timeout=1.0,
                    headers={"Nats-Msg-Id": f"{self._run_id}-{n}", "Sb-From": "backend"},
                )
            except Exception:  # NATS away: the same n again, stored at most once
                self.failures += 1
                await asyncio.sleep(0.1)
                continue
            self.acked.append(n)
            n += 1
            if not self._running:
                return
            await asyncio.sleep(0.02)

    async def stop(self) -> list[int]:
        self._running = False
        try:
            async with asyncio.timeout(30):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            raise AssertionError("the backend could not publish for 30 s") from None
        return self.acked


@pytest.fixture(scope="module")
def app() -> Iterator[str]:
    with app_server() as base:
        yield base


@pytest.fixture(scope="module")
def history(nats_server: NatsServer) -> None:
    channel_cli(nats_server, "apply", "-f", "-", stdin=HISTORY)
    time.sleep(0.5)  # edges started later read it at start; running ones within this


@contextlib.asynccontextmanager
async def backend_on(nats_url: str, channel: str) -> AsyncIterator[Backend]:
    nc = await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    backend = Backend(nc.jetstream(), "sb.ch." + channel.replace(":", "."))
    try:
        yield backend
    finally:
        with contextlib.suppress(AssertionError):
            await backend.stop()  # again after a scenario's own stop: returns at once
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await nc.close()


async def open_page(browser: Any, app: str, edges: list[Edge], channel: str, **query: str) -> Any:
    urls = ",".join(edge.ws_url for edge in edges)
    params = "&".join(f"{k}={v}" for k, v in ({"urls": urls, "history": channel} | query).items())
    page = await browser.new_page()
    await page.goto(f"{app}/?{params}")
    await page.wait_for_function("() => window.sbLog && window.sbLog.acks.length >= 1")
    return page


async def page_log(page: Any) -> dict[str, Any]:
    async with asyncio.timeout(10):
        log: dict[str, Any] = await page.evaluate("() => window.sbLog")
    return log


async def wait_js(page: Any, condition: str, timeout_s: float = 20) -> None:
    try:
        await page.wait_for_function(f"() => {condition}", timeout=timeout_s * 1000)
    except Exception as exc:
        log = await page_log(page)
        raise AssertionError(f"page never reached `{condition}`; its log: {summary(log)}") from exc


def summary(log: dict[str, Any]) -> dict[str, Any]:
    hist = log["hist"]
    return {k: v for k, v in log.items() if k != "hist"} | {"hist": f"{len(hist)}: {hist[-5:]}"}


async def everything_arrived(page: Any, backend: Backend) -> dict[str, Any]:
    """Stop publishing; the page's log once it holds as many events as were acked."""
    acked = await backend.stop()
    assert len(acked) > 50, "the backend kept publishing through the scenario"
    try:
        await wait_js(page, f"window.sbLog.hist.length >= {len(acked)}")
    except AssertionError as exc:
        hist = (await page_log(page))["hist"]
        missing = [n for n in acked if n not in hist]
        raise AssertionError(f"missing {missing} of {len(acked)} acked; {exc}") from None
    await asyncio.sleep(0.3)  # a duplicate would come now
    log = await page_log(page)
    assert log["hist"] == acked, f"lost, duplicated or out of order: {summary(log)}"
    return log


async def test_a_drain_moves_the_page_with_its_resume_token(
    browser: Any, app: str, history: None, nats_server: NatsServer, edge_factory: EdgeFactory
) -> None:
    a = edge_factory.start("page-a-drained", reconnect_jitter_ms="500")
    b = edge_factory.start("page-a-other")
    page = await open_page(browser, app, [a, b], "pagehist:a")
    async with backend_on(nats_server.url, "pagehist:a") as backend:
        await wait_js(page, "window.sbLog.hist.length >= 25")
        assert a.process is not None
        a.process.terminate()  # SIGTERM, as in a rollout: the edge drains
        await wait_js(page, "window.sbLog.connected.length >= 2")
        await asyncio.sleep(1)
        log = await everything_arrived(page, backend)
    assert [d["code"] for d in log["disconnected"]] == [1001]
    assert log["connected"][1]["url"] == b.ws_url
    assert log["connected"][1]["resumed"] is True
    assert log["acks"][1]["recovered"] is True
    assert log["gaps"] == []
    assert log["tokens"] == 1  # the resume token stood in for the JWT


async def test_b_sigkill_backs_off_and_recovers_with_since_elsewhere(
    browser: Any, app: str, history: None, nats_server: NatsServer, edge_factory: EdgeFactory
) -> None:
    a = edge_factory.start("page-b-killed")
    b = edge_factory.start("page-b-other")
    page = await open_page(browser, app, [a, b], "pagehist:b")
    async with backend_on(nats_server.url, "pagehist:b") as backend:
        await wait_js(page, "window.sbLog.hist.length >= 25")
        assert a.process is not None
        a.process.kill()
        await wait_js(page, "window.sbLog.acks.length >= 2")
        await asyncio.sleep(1)
        log = await everything_arrived(page, backend)
    assert [d["code"] for d in log["disconnected"]] == [1006]
    assert log["disconnected"][0]["willRetry"] is True
    assert 0 <= log["disconnected"][0]["delayMs"] <= 500  # first backoff: U(0, 0.5 s)
    assert log["connected"][1]["url"] == b.ws_url
    assert log["connected"][1]["resumed"] is False
    assert log["acks"][1]["resubscribed"] is True
    assert log["acks"][1]["recovered"] is True
    assert log["gaps"] == []


async def test_c_expired_token_4001_one_new_token_reconnect_resubscribe(
    browser: Any, app: str, history: None, nats_server: NatsServer, edge_factory: EdgeFactory
) -> None:
    a = edge_factory.start("page-c-1")
    b = edge_factory.start("page-c-2")
    # refresh off: the token runs out on the open connection
    page = await open_page(browser, app, [a, b], "pagehist:c", first_ttl="4", refresh="0")
    async with backend_on(nats_server.url, "pagehist:c") as backend:
        await wait_js(page, "window.sbLog.acks.length >= 2")
        await asyncio.sleep(1)
        log = await everything_arrived(page, backend)
    assert [(d["code"], d["reason"]) for d in log["disconnected"]] == [(4001, "token expired")]
    assert log["tokens"] == 2  # once at start, once after the 4001
    assert len(log["connected"]) == 2
    assert log["acks"][1]["resubscribed"] is True
    assert log["acks"][1]["recovered"] is True


async def test_d_refused_handshake_at_a_full_edge_1013_then_the_other_url(
    browser: Any, app: str, history: None, nats_server: NatsServer, edge_factory: EdgeFactory
) -> None:
    a = edge_factory.start("page-d-full", max_connections="1")
    b = edge_factory.start("page-d-other")
    occupant = await Client.connect(a.ws_url, token=token("occupant"))
    try:
        page = await open_page(browser, app, [a, b], "pagehist:d")
        async with backend_on(nats_server.url, "pagehist:d") as backend:
            await wait_js(page, "window.sbLog.hist.length >= 60")
            log = await everything_arrived(page, backend)
    finally:
        await occupant.close()
    # the page read the refusal: 101, then close 1013 with the edge's Retry-After
    assert [(d["code"], d["reason"]) for d in log["disconnected"]] == [(1013, "retry after 5000")]
    assert [c["url"] for c in log["connected"]] == [b.ws_url]
    assert log["tokens"] == 1


async def test_d_refused_handshake_at_a_draining_edge_1013_then_the_other_url(
    browser: Any, app: str, history: None, nats_server: NatsServer, edge_factory: EdgeFactory
) -> None:
    a = edge_factory.start("page-d-draining", drain_reconnects_per_s="0.01")
    b = edge_factory.start("page-d-fine")
    occupant = await Client.connect(a.ws_url, token=token("occupant"))  # keeps it draining
    assert a.process is not None
    a.process.terminate()
    await asyncio.sleep(0.5)
    page = await open_page(browser, app, [a, b], "pagehist:d2")
    log = await page_log(page)
    assert [(d["code"], d["reason"]) for d in log["disconnected"]] == [(1013, "retry after 1000")]
    assert [c["url"] for c in log["connected"]] == [b.ws_url]
    a.process.kill()
    await occupant.close()


@pytest.fixture
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=str(tmp_path_factory.mktemp("nats-page")), auth=True).start()
    yield server
    server.stop()


async def test_e_nats_restart_gap_without_history_nothing_lost_with_history(
    browser: Any, app: str, own_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    channel_cli(own_nats, "apply", "-f", "-", stdin=HISTORY)
    factory = EdgeFactory(own_nats, str(tmp_path_factory.mktemp("page-e-edges")))
    try:
        a = factory.start("page-e-1")
        b = factory.start("page-e-2")
        page = await open_page(browser, app, [a, b], "pagehist:e", plain="pageplain:e")
        async with backend_on(own_nats.url, "pagehist:e") as backend:
            await wait_js(page, "window.sbLog.hist.length >= 25")
            own_nats.stop(keep_store=True)
            await asyncio.sleep(3)
            own_nats.start()  # same port, same store
            await wait_js(page, "window.sbLog.gaps.length >= 1", timeout_s=20)
            await asyncio.sleep(2)
            log = await everything_arrived(page, backend)
        assert backend.failures > 0, "the backend saw the outage"
        plain_gaps = [g for g in log["gaps"] if g["channel"] == "pageplain:e"]
        assert len(plain_gaps) == 1
        assert plain_gaps[0]["reason"] == "backbone"
        assert plain_gaps[0]["untilTs"] - plain_gaps[0]["sinceTs"] >= 3000
        assert log["disconnected"] == []  # the edges kept the page through the outage
    finally:
        factory.stop_all()


async def test_tickets_across_origins(
    browser: Any, app: str, history: None, edge1: Edge, edge2: Edge
) -> None:
    """`tickets: true`: POST /v1/tickets from the app's origin (CORS), then `?ticket=`."""
    page = await open_page(browser, app, [edge1, edge2], "pagehist:t", tickets="1")
    log = await page_log(page)
    assert [c["url"] for c in log["connected"]] == [edge1.ws_url]
    assert log["disconnected"] == []
    assert log["errors"] == []
    asked = await page.evaluate(
        "() => performance.getEntriesByType('resource').map((e) => e.name)"
        ".filter((name) => name.endsWith('/v1/tickets'))"
    )
    assert asked == [f"{edge1.http_url}/v1/tickets"]


async def test_f_frozen_edge_noticed_by_the_silence_probe(
    browser: Any, app: str, history: None, nats_server: NatsServer, edge_factory: EdgeFactory
) -> None:
    """SIGSTOP: no close, no FIN. The page cannot see WebSocket pings; its probe goes
    unanswered, it gives the connection up and recovers elsewhere with `since`."""
    a = edge_factory.start("page-f-frozen", ping_interval_s="1")
    b = edge_factory.start("page-f-other")
    assert a.process is not None
    page = await open_page(browser, app, [a, b], "pagehist:f", probe_ms="1500")
    try:
        async with backend_on(nats_server.url, "pagehist:f") as backend:
            await wait_js(page, "window.sbLog.hist.length >= 25")
            a.process.send_signal(signal.SIGSTOP)
            await wait_js(page, "window.sbLog.acks.length >= 2")
            await asyncio.sleep(1)
            log = await everything_arrived(page, backend)
    finally:
        a.process.send_signal(signal.SIGCONT)
    assert [d["code"] for d in log["disconnected"]] == [4000]
    assert "no answer from the edge" in log["disconnected"][0]["reason"]
    assert log["connected"][1]["url"] == b.ws_url
    assert log["acks"][1]["recovered"] is True


async def test_e_resubscription_failing_while_nats_is_down_is_retried_until_it_is_back(
    browser: Any, app: str, own_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The page's edge dies while NATS is down: on the other edge its resubscription is
    answered `unavailable`; that fails the connection, the page backs off and tries
    again until NATS is back, then recovers everything with `since`."""
    channel_cli(own_nats, "apply", "-f", "-", stdin=HISTORY)
    factory = EdgeFactory(own_nats, str(tmp_path_factory.mktemp("page-e2-edges")))
    try:
        a = factory.start("page-e2-1")
        b = factory.start("page-e2-2")
        assert a.process is not None
        page = await open_page(browser, app, [a, b], "pagehist:e2")
        async with backend_on(own_nats.url, "pagehist:e2") as backend:
            await wait_js(page, "window.sbLog.hist.length >= 25")
            own_nats.stop(keep_store=True)
            a.process.kill()
            await wait_js(page, "window.sbLog.disconnected.some((d) => d.code === 4000)")
            await asyncio.sleep(2)
            own_nats.start()
            await wait_js(page, "window.sbLog.acks.length >= 2", timeout_s=30)
            await asyncio.sleep(1)
            log = await everything_arrived(page, backend)
        codes = [d["code"] for d in log["disconnected"]]
        assert codes[0] == 1006
        failed = [d for d in log["disconnected"] if d["code"] == 4000]
        assert failed, codes
        # answered `unavailable`, or not answered in time: either fails the connection
        assert all(
            re.fullmatch(r"subscribe 'pagehist:e2' failed: (unavailable|no_answer)", d["reason"])
            for d in failed
        ), failed
        assert all(d["willRetry"] for d in log["disconnected"])
        assert log["acks"][1]["recovered"] is True
    finally:
        factory.stop_all()


# The test's stand-in for a network that breaks WebSocket upgrades: every WebSocket the
# page makes goes to a port where nothing listens (it fails as a blocked upgrade does,
# 1006), until the test sets `window.sbWsBlocked = false`.
BLOCK_WEBSOCKETS = """
(() => {
  const Real = window.WebSocket;
  window.sbWsBlocked = true;
  function Blockable(url, protocols) {
    return new Real(window.sbWsBlocked ? "ws://127.0.0.1:9/blocked" : url, protocols);
  }
  Blockable.prototype = Real.prototype;
  Object.assign(Blockable, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = Blockable;
})();
"""


async def test_g_websockets_blocked_fall_back_to_sse_then_back_nothing_lost(
    browser: Any, app: str, history: None, nats_server: NatsServer, edge_factory: EdgeFactory
) -> None:
    """WebSockets fail: after two failed attempts the SDK streams over SSE and publishes
    with POST; once WebSockets work again it moves back within `retry_ws_ms`. The history
    channel's events are all there, once, in order, across both switches."""
    edge = edge_factory.start("page-g")
    context = await browser.new_context()
    await context.add_init_script(BLOCK_WEBSOCKETS)
    page = await context.new_page()
    query = f"urls={edge.ws_url}&history=pagehist:g&plain=pageplain:g&retry_ws_ms=2000"
    await page.goto(f"{app}/?{query}")
    await wait_js(page, "window.sbLog.acks.length >= 1")
    async with backend_on(nats_server.url, "pagehist:g") as backend:
        await wait_js(page, "window.sbLog.hist.length >= 25")
        log = await page_log(page)
        assert log["transports"] == ["sse"]
        assert [d["code"] for d in log["disconnected"]] == [1006, 1006]
        assert log["connected"][0]["transport"] == "sse"
        assert await page.evaluate("() => window.sbClient.transport") == "sse"
        ack = await page.evaluate(
            "() => window.sbClient.publish('pageplain:g', {from: 'page'})"
        )  # a POST /v1/messages
        assert ack == {"channel": "pageplain:g"}
        await wait_js(page, "window.sbLog.plain.length >= 1")
        await page.evaluate("() => { window.sbWsBlocked = false; }")
        await wait_js(page, "window.sbLog.transports.length >= 2", timeout_s=15)
        await wait_js(page, "window.sbLog.connected.length >= 2")
        await asyncio.sleep(1)
        log = await everything_arrived(page, backend)
    assert log["transports"] == ["sse", "websocket"]
    assert log["connected"][1]["transport"] == "websocket"
    assert log["plain"] == [{"from": "page"}]
    # only the channel without history is told it may have missed something, once: when
    # its subscription was taken again on the WebSocket
    assert [(g["channel"], g["reason"]) for g in log["gaps"]] == [("pageplain:g", "reconnect")]
    assert [a["resubscribed"] for a in log["acks"]] == [False, True]
    assert log["acks"][1]["recovered"] is True
    await context.close()
