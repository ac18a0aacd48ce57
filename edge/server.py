"""The edge's listening socket: upgrades admitted or refused, one `Connection` per
client, the keepalive and slow-consumer sweep, and an orderly shutdown."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from edge import tracing
from edge.admin import Admin
from edge.admission import Admission
from edge.api import ServerApi
from edge.connection import Connection, EdgeConnection
from edge.control import Control
from edge.flusher import Flusher
from edge.node import Node
from edge.ports import Backbone
from edge.routes import Routes, response
from edge.session import Limits, Session
from edge.settings import EdgeSettings
from edge.tracing import SpanKind
from edge.upgrade import SUBPROTOCOL, Refusal, route
from switchboard.contract.localdrain import remove_secret, secret_path, write_secret
from switchboard.contract.tokens import TokenVerifier

log = logging.getLogger("switchboard.edge.server")

WS_PATH = "/v1/ws"


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
    """Owns the listening socket and the live connections of one edge."""

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
        self.connections: set[Connection] = set()
        self._background: list[asyncio.Task[None]] = []
        self._server: Server | None = None
        # Upgrades refused in band: answered 101, closed by `_handle` before any frame.
        self._refused: weakref.WeakKeyDictionary[ServerConnection, Refusal] = (
            weakref.WeakKeyDictionary()
        )

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self.flusher = Flusher(asyncio.get_running_loop())
        keys = self.admission.keys
        if keys is not None and not await keys.load():  # bounded by its timeout
            log.warning("no JWKS yet: not ready, tokens refused until it is read")
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            create_connection=EdgeConnection,
            max_size=self.settings.max_message_bytes,
            # permessage-deflate would compress each event once per connection and hold
            # zlib state (~tens of KiB) per connection: off, events are encoded once per edge.
            compression=None,
            # Keepalive runs from one sweep over all connections (_sweep), not from a
            # task per connection as websockets' own would.
            ping_interval=None,
            close_timeout=2,
            server_header=None,
            backlog=4096,
        )
        self.routes.drain_secret = write_secret(self._drain_secret_path)
        await self.admin.start(self.settings.admin_host, self.settings.admin_port)
        node = self.node
        self._background = [
            asyncio.create_task(self._sweep()),
            asyncio.create_task(self.control.report_stats()),
            asyncio.create_task(self.backbone.watch_channels(node.directory.apply)),
            asyncio.create_task(node.presence.refresh_forever()),
        ]
        if keys is not None:
            self._background.append(asyncio.create_task(keys.refresh_forever()))

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
        """Drain (if not already draining), then stop listening."""
        await self.control.start_drain(reason)
        for task in self._background:
            task.cancel()
        if self._server is not None:
            remove_secret(self._drain_secret_path)
            self._server.close(close_connections=False)
            await self._server.wait_closed()
        await self.admin.stop()

    async def _sweep(self) -> None:
        """Periodic checks of every connection: slow consumers and keepalive pings."""
        settings = self.settings
        period = min(0.5, settings.slow_consumer_grace_s / 2, settings.ping_timeout_s / 2)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for conn in tuple(self.connections):
                try:
                    if conn.outbox.stalled(now):
                        conn.evict("peer not reading")
                    else:
                        conn.keepalive(now, settings.ping_interval_s, settings.ping_timeout_s)
                except Exception:  # one broken connection must not stop the sweep
                    conn.log.exception("sweep failed for this connection")

    # -- the upgrade --------------------------------------------------------

    @staticmethod
    def _select_subprotocol(
        ws: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = route(request.path)
        if path != WS_PATH:
            return await self.routes.answer(ws, request, path)
        started = time.perf_counter()
        with tracing.tracer().start_as_current_span(
            "sb.upgrade", kind=SpanKind.SERVER, attributes={"sb.pod": self.settings.pod_name}
        ) as span:
            decision = await self.admission.check(request)
            refusal = decision if isinstance(decision, Refusal) else None
            in_band = refusal is not None and self.admission.in_band(refusal, request)
            status = 101 if refusal is None or in_band else refusal.status
            span.set_attribute("http.response.status_code", status)
            if refusal is not None and in_band:
                span.set_attribute("sb.refusal.close_code", refusal.close_code)
        self.node.metrics.handshakes["accepted" if refusal is None else "refused"].observe(
            time.perf_counter() - started
        )
        if refusal is None:
            assert isinstance(ws, EdgeConnection) and not isinstance(decision, Refusal)
            ws.claims, ws.resume = decision.claims, decision.resume
            return None
        self.node.metrics.count_refusal(refusal.status, in_band)
        if in_band:  # 101, then `_handle` closes with the refusal's code at once
            self._refused[ws] = refusal
            return None
        return response(refusal.status, f"{refusal.reason}\n", headers=refusal.headers)

    # -- connections -----------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        refusal = self._refused.pop(ws, None)
        if refusal is not None:  # refused in band: no session, no hub, no cap slot
            await ws.close(refusal.close_code, refusal.close_reason)
            return
        assert isinstance(ws, EdgeConnection)
        assert ws.claims is not None
        # The handshake is over: its headers (~4 KiB) would otherwise live as long
        # as the connection. (websockets keeps `ws.request` as its "handshake done"
        # marker, so only the headers go.)
        if ws.request is not None:
            ws.request.headers = Headers()
        if ws.response is not None:
            ws.response.headers = Headers()
        node = self.node
        session = Session(
            ws.claims,
            limits=self.limits,
            policy_for=node.policy_for,
            verify=self.verifier.verify,
            now=asyncio.get_running_loop().time(),
            on_error=node.record_error,
        )
        conn = Connection(node, self.flusher, ws, session, secrets.token_hex(6))
        self.connections.add(conn)
        node.members.add(conn.member)
        node.metrics.connections_total += 1
        if log.isEnabledFor(logging.INFO):
            log.info("connected", extra=conn.log_fields())
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            node.members.discard(conn.member)
            sent = ws.protocol.close_sent  # what we told the peer, else what it told us
            code = conn.closed_with or (sent.code if sent else None) or ws.close_code or 1006
            node.metrics.count_close(code)
            if log.isEnabledFor(logging.INFO):
                log.info("disconnected", extra=conn.log_fields() | {"code": code})
