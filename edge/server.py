"""The edge's listening socket: upgrades admitted or refused, one `Connection` per
client, the keepalive and slow-consumer sweep, and an orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from opentelemetry.trace import Span
from websockets.http11 import Response

from edge import tracing
from edge.admin import Admin
from edge.admission import ORIGIN_REFUSAL, Admission, Admitted, Pending
from edge.api import ServerApi
from edge.connection import Connection
from edge.control import Control
from edge.flusher import Flusher
from edge.http import HttpError, HttpRequest, plain_response
from edge.node import Node
from edge.ports import Backbone
from edge.routes import Routes, response
from edge.session import Limits, Session
from edge.settings import EdgeSettings
from edge.sse import (
    MESSAGES_PATH,
    SSE_PATH,
    Poster,
    SseStream,
    StreamRequest,
    channel_refusal,
    cors_headers,
    preflight,
    read_stream_request,
    refusal_answer,
    stream_head,
    subscriptions_for,
)
from edge.transport import ClientPort, ClientSocket
from edge.upgrade import SUBPROTOCOL, Refusal, route
from switchboard.contract.localdrain import remove_secret, secret_path, write_secret
from switchboard.contract.names import CHANNELS_BUCKET, REVOKED_BUCKET
from switchboard.contract.tokens import Claims, TokenVerifier

log = logging.getLogger("switchboard.edge.server")

WS_PATH = "/v1/ws"
REVOCATION_PRUNE_S = 60.0  # how often revocations every token has outlived are forgotten


def limits_of(settings: EdgeSettings) -> Limits:
    return Limits(
        max_message_bytes=settings.max_message_bytes,
        max_subscriptions=settings.max_subscriptions,
        max_rpcs_in_flight=settings.max_rpcs_in_flight,
        rate_per_s=settings.rate_per_s,
        rate_burst=settings.rate_burst,
        abuse_errors=settings.abuse_errors,
        abuse_window_s=settings.abuse_window_s,
        rpc_timeout_ms=settings.rpc_timeout_ms,
        rpc_max_timeout_ms=settings.rpc_max_timeout_ms,
    )


class EdgeServer:
    """Owns the listening socket and the live connections of one edge; decides every
    request of the client port (`edge.transport.RequestHandler`)."""

    def __init__(self, settings: EdgeSettings, backbone: Backbone, verifier: TokenVerifier) -> None:
        self.settings = settings
        self.backbone = backbone
        self.verifier = verifier
        self.node = Node(settings, backbone)
        self.control = Control(self.node)
        self.admission = Admission(self.node, verifier)
        self.routes = Routes(self.node, self.control, self.admission)
        self.admin = Admin(self.node, ServerApi(self.node, settings.api_keys()))
        self.limits = limits_of(settings)
        self.poster = Poster(self.node, self.admission.verify, self._session, log)
        self.connections: set[Connection] = set()
        self._background: list[asyncio.Task[None]] = []
        self._answering: set[asyncio.Task[None]] = set()  # HTTP routes, ticket redemptions
        self._server: asyncio.Server | None = None
        self._emptied: asyncio.Event | None = None  # set when the last connection is gone

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self.flusher = Flusher(asyncio.get_running_loop(), self.settings.write_delay_ms / 1000)
        keys = self.admission.keys
        if keys is not None and not await keys.load():  # bounded by its timeout
            log.warning("no JWKS yet: not ready, tokens refused until it is read")
        node = self.node
        channels_read, revocations_read = asyncio.Event(), asyncio.Event()

        def channels_complete() -> None:
            node.directory.mark_complete()
            channels_read.set()

        def revocations_complete() -> None:
            node.revocations.mark_complete()
            revocations_read.set()

        backbone = self.backbone
        self._background = [
            asyncio.create_task(backbone.watch_channels(node.directory.apply, channels_complete)),
            asyncio.create_task(
                backbone.watch_revocations(node.revocations.apply, revocations_complete)
            ),
        ]
        await self._read_stores(channels_read, revocations_read)
        # permessage-deflate is never negotiated: it would compress each event once per
        # connection and hold zlib state (~tens of KiB) per connection.
        self._port = ClientPort(
            self,
            max_message_bytes=self.settings.max_message_bytes,
            max_body_bytes=self.settings.max_message_bytes,  # POST /v1/messages
        )
        self._server = await self._port.listen(self.settings.host, self.settings.port)
        self.routes.drain_secret = write_secret(self._drain_secret_path)
        await self.admin.start(self.settings.admin_host, self.settings.admin_port)
        self._background += [
            asyncio.create_task(self._sweep()),
            asyncio.create_task(self._port.expire_forever()),
            asyncio.create_task(self.control.report_stats()),
            asyncio.create_task(node.presence.refresh_forever()),
        ]
        if keys is not None:
            self._background.append(asyncio.create_task(keys.refresh_forever()))

    async def _read_stores(self, channels: asyncio.Event, revocations: asyncio.Event) -> None:
        """Wait, bounded, for the Channels and the revocations before the port opens: a
        client subscribing earlier would get the default policy (no offsets, no
        recovery) on a channel whose Channel keeps history; a revoked token would pass."""
        timeout_s = self.settings.channels_snapshot_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await channels.wait()
                await revocations.wait()
        except TimeoutError:
            late = [
                name
                for name, read in ((CHANNELS_BUCKET, channels), (REVOKED_BUCKET, revocations))
                if not read.is_set()
            ]
            log.warning(
                "%s not read within %.1f s: serving (the default channel policy, no "
                "revocations), not ready until read",
                " and ".join(late),
                timeout_s,
            )

    @property
    def _drain_secret_path(self) -> Path:
        return secret_path(self.port, self.settings.drain_secret_file)

    @property
    def port(self) -> int:
        assert self._server is not None
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    def on_backbone_state(self, connected: bool) -> None:
        self.node.on_backbone_state(connected)

    async def listen_for_control(self) -> None:
        await self.control.listen()

    def start_drain(self, reason: str) -> asyncio.Task[None]:
        return self.control.start_drain(reason)

    async def shutdown(self, reason: str = "shutdown") -> None:
        """Drain (if not already draining), then stop listening and let the last
        connections finish (each is closed or aborted within 2 s)."""
        await self.control.start_drain(reason)
        for task in self._background:
            task.cancel()
        if self._server is not None:
            remove_secret(self._drain_secret_path)
            self._server.close()
            if self.connections:
                self._emptied = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._emptied.wait(), 5.0)
        await self.admin.stop()

    async def _sweep(self) -> None:
        """Periodic checks of every connection: slow consumers, keepalive pings and
        token expiry; and, once a minute, revocations every token has outlived."""
        settings = self.settings
        period = min(0.5, settings.slow_consumer_grace_s / 2, settings.ping_timeout_s / 2)
        loop = asyncio.get_running_loop()
        pruned_at = loop.time()
        while True:
            await asyncio.sleep(period)
            now, wall = loop.time(), time.time()
            if now - pruned_at >= REVOCATION_PRUNE_S:
                pruned_at = now
                self.node.revocations.prune(wall)
            interval, timeout = settings.ping_interval_s, settings.ping_timeout_s
            for conn in tuple(self.connections):
                try:
                    conn.tick(now, wall, interval, timeout)
                except Exception:  # one broken connection must not stop the sweep
                    conn.log.exception("sweep failed for this connection")

    # -- requests -------------------------------------------------------------

    def _server_span(self, sock: ClientSocket, request: HttpRequest, path: str) -> Span | None:
        """The HTTP server span of a GET that opens a connection (none when tracing is off)."""
        if not tracing.enabled():
            return None
        return tracing.server_span(
            "GET", path, request.path, request.headers, self.port, sock.remote_address
        )

    def handle_request(self, sock: ClientSocket, request: HttpRequest) -> None:
        path = route(request.path)
        if path == SSE_PATH:
            self._open_stream(sock, request)
            return
        if path != WS_PATH:
            self._in_task(self._answer(sock, request, path))
            return
        started = time.perf_counter()
        span = self._server_span(sock, request, WS_PATH)
        decision = self.admission.check(request)
        if isinstance(decision, Pending):
            self._in_task(self._settle(sock, request, decision, span, started))
        else:
            self._upgrade(sock, request, decision, span, started)

    def _in_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, sock: ClientSocket, request: HttpRequest, path: str) -> None:
        try:
            if path == MESSAGES_PATH:
                answer = await self._post(request)
            else:
                answer = await self.routes.answer(sock, request, path)
        except HttpError as exc:
            answer = plain_response(exc.status, f"{exc.reason}\n")
        except Exception:
            log.exception("HTTP route failed", extra={"path": path})
            answer = plain_response(500, "internal error\n")
        sock.respond(answer)

    async def _settle(
        self,
        sock: ClientSocket,
        request: HttpRequest,
        pending: Pending,
        span: Span | None,
        started: float,
    ) -> None:
        try:
            decision = await self.admission.settle(pending)
        except BaseException:
            tracing.end_server(span, 500, None)
            raise
        self._upgrade(sock, request, decision, span, started)

    def _upgrade(
        self,
        sock: ClientSocket,
        request: HttpRequest,
        decision: Admitted | Refusal,
        span: Span | None,
        started: float,
    ) -> None:
        """Answer an upgrade once admission has decided: 101 and a connection, a
        refusal in band (101, then the close) or an HTTP refusal."""
        refusal = decision if isinstance(decision, Refusal) else None
        in_band = refusal is not None and self.admission.in_band(refusal, request)
        if span is not None:
            status = 101 if refusal is None or in_band else refusal.status
            tracing.end_server(span, status, refusal.close_code if refusal and in_band else None)
        self.node.metrics.handshakes["accepted" if refusal is None else "refused"].observe(
            time.perf_counter() - started
        )
        if refusal is not None:
            self.node.metrics.count_refusal(refusal.status, in_band)
            if not in_band:
                sock.respond(
                    response(refusal.status, f"{refusal.reason}\n", headers=refusal.headers)
                )
                return
        head = sock.handshake(request, SUBPROTOCOL)
        if not isinstance(head, bytes):  # not a valid WebSocket handshake: websockets' answer
            sock.respond(head)
            return
        if refusal is not None:  # no session, no hub, no cap slot
            sock.refuse_in_band(head, refusal.close_code, refusal.close_reason)
            return
        assert isinstance(decision, Admitted)
        if sock.closed:
            return
        node = self.node
        conn = Connection(
            node,
            self.flusher,
            sock,
            self._session(decision.claims),
            secrets.token_hex(6),
            resume=decision.resume,
            on_done=self._finished,
        )
        self.connections.add(conn)
        node.members.add(conn.member)
        node.metrics.connections_total += 1
        if log.isEnabledFor(logging.INFO):
            log.info("connected", extra=conn.log_fields())
        conn.open(head)

    def _session(self, claims: Claims) -> Session:
        node = self.node
        return Session(
            claims,
            limits=self.limits,
            policy_for=node.policy_for,
            verify=self.admission.verify_now,
            now=asyncio.get_running_loop().time(),
            on_error=node.record_error,
        )

    # -- the fallback transport: GET /v1/sse, POST /v1/messages -----------------

    async def _post(self, request: HttpRequest) -> Response:
        if not self.admission.origin_ok(request):
            return refusal_answer(ORIGIN_REFUSAL)
        with tracing.request_span(
            "POST", MESSAGES_PATH, request.path, request.headers, self.port
        ) as span:
            answer = await self.poster.answer(request)
            tracing.answered(span, answer.status_code)
        return answer

    def _open_stream(self, sock: ClientSocket, request: HttpRequest) -> None:
        """`GET /v1/sse`: the upgrade's checks (Origin, draining, cap, rate, credentials),
        the channels' authorization, then a stream; every refusal an HTTP status."""
        started = time.perf_counter()
        if not self.admission.origin_ok(request):
            self._refuse_stream(sock, request, ORIGIN_REFUSAL)
            return
        if request.method == "OPTIONS":
            sock.respond(preflight(request, "GET"))
            return
        if request.method != "GET":
            self._refuse_stream(sock, request, Refusal(405, "use GET"))
            return
        wanted = read_stream_request(request, self.settings.max_subscriptions)
        if isinstance(wanted, Refusal):  # before a ticket is spent
            self._refuse_stream(sock, request, wanted)
            return
        span = self._server_span(sock, request, SSE_PATH)
        decision = self.admission.check(request)
        if isinstance(decision, Pending):
            self._in_task(self._settle_stream(sock, request, wanted, decision, span, started))
        else:
            self._start_stream(sock, request, wanted, decision, span, started)

    async def _settle_stream(
        self,
        sock: ClientSocket,
        request: HttpRequest,
        wanted: StreamRequest,
        pending: Pending,
        span: Span | None,
        started: float,
    ) -> None:
        try:
            decision = await self.admission.settle(pending)
        except BaseException:
            tracing.end_server(span, 500)
            raise
        self._start_stream(sock, request, wanted, decision, span, started)

    def _start_stream(
        self,
        sock: ClientSocket,
        request: HttpRequest,
        wanted: StreamRequest,
        decision: Admitted | Refusal,
        span: Span | None,
        started: float,
    ) -> None:
        node = self.node
        refusal = decision if isinstance(decision, Refusal) else None
        subscriptions: list[dict[str, Any]] = []
        if isinstance(decision, Admitted):
            subscriptions = subscriptions_for(wanted, decision.resume)
            refusal = channel_refusal(node, decision.claims, [s["channel"] for s in subscriptions])
        tracing.end_server(span, 200 if refusal is None else refusal.status)
        node.metrics.handshakes["accepted" if refusal is None else "refused"].observe(
            time.perf_counter() - started
        )
        if refusal is not None:
            self._refuse_stream(sock, request, refusal)
            return
        assert isinstance(decision, Admitted)
        if sock.closed:
            return
        stream = SseStream(
            node,
            self.flusher,
            sock,
            self._session(decision.claims),
            secrets.token_hex(6),
            subscriptions=subscriptions,
            positions=wanted.positions,
            on_done=self._finished,
        )
        self.connections.add(stream)
        node.members.add(stream.member)
        node.metrics.connections_total += 1
        node.metrics.sse_streams += 1
        node.metrics.sse_streams_total += 1
        if log.isEnabledFor(logging.INFO):
            log.info("connected", extra=stream.log_fields() | {"transport": "sse"})
        stream.open(stream_head(request))

    def _refuse_stream(self, sock: ClientSocket, request: HttpRequest, refusal: Refusal) -> None:
        self.node.metrics.sse_refusals[refusal.status] += 1
        cors = {} if refusal is ORIGIN_REFUSAL else cors_headers(request)
        sock.respond(refusal_answer(refusal, cors))

    def _finished(self, conn: Connection) -> None:
        """The connection is gone and its member has left everything."""
        self.connections.discard(conn)
        self.node.members.discard(conn.member)
        if isinstance(conn, SseStream):
            self.node.metrics.sse_streams -= 1
        if not self.connections and self._emptied is not None:
            self._emptied.set()
        code = conn.close_code
        self.node.metrics.count_close(code)
        if log.isEnabledFor(logging.INFO):
            log.info("disconnected", extra=conn.log_fields() | {"code": code})
