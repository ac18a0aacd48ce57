"""The edge's WebSocket server: HTTP routes, auth during the upgrade, connections."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
import weakref
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from edge import protocol, tracing
from edge.connection import Connection, EdgeConnection
from edge.directory import ChannelDirectory
from edge.drain import DrainPace, next_move_at, reconnect_after_ms
from edge.flusher import Flusher
from edge.hub import Hub
from edge.metrics import EdgeMetrics, render
from edge.ports import (
    Backbone,
    Delivery,
    NoResponders,
    RequestTimeout,
    SubscriptionHandle,
    Unavailable,
)
from edge.presence import Presence
from edge.ratelimit import TokenBucket
from edge.session import Limits, Session
from edge.settings import EdgeSettings
from edge.tracing import SpanKind
from edge.upgrade import (
    SUBPROTOCOL,
    Refusal,
    find_credential,
    is_ticket_shaped,
    new_ticket,
    origin_allowed,
    refuse_in_band,
    route,
)
from switchboard.contract.codes import CloseCode
from switchboard.contract.localdrain import HEADER as DRAIN_SECRET_HEADER
from switchboard.contract.localdrain import remove_secret, secret_path, write_secret
from switchboard.contract.names import control_subject, drain_subject
from switchboard.contract.resume import mint_resume, read_resume
from switchboard.contract.settings import ChannelPolicy
from switchboard.contract.tokens import Claims, TokenError, TokenVerifier, mint_token

log = logging.getLogger("switchboard.edge.server")

WS_PATH = "/v1/ws"
ORIGIN_REFUSAL = Refusal(403, "origin not allowed")


def _response(
    status: int,
    body: str | bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: dict[str, str] | None = None,
) -> Response:
    raw = body.encode() if isinstance(body, str) else body
    all_headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(raw))),
            ("Cache-Control", "no-store"),
            *(headers or {}).items(),
        ]
    )
    reason = {
        200: "OK",
        201: "Created",
        204: "No Content",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        429: "Too Many Requests",
        503: "Service Unavailable",
    }.get(status, "")
    return Response(status, reason, all_headers, raw)


def _json(status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return _response(status, json.dumps(obj), "application/json", headers)


RATE_IGNORED = "rate ignored: needs reconnects_per_second > 0 and a seq no older than the last"


class EdgeServer:
    """Owns the listening socket, the live connections and the upgrade checks."""

    def __init__(self, settings: EdgeSettings, backbone: Backbone, verifier: TokenVerifier) -> None:
        self.settings = settings
        self.backbone = backbone
        self.verifier = verifier
        self.directory = ChannelDirectory(settings.default_channel)
        self.hub = Hub(
            backbone,
            settings.subject_prefix,
            expose_publisher=settings.expose_publisher,
            pod=settings.pod_name,
            stream_for=self.directory.stream_for,
        )
        self.limits = Limits(
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
        self.presence = Presence(
            backbone, settings.subject_prefix, settings.pod_name, settings.presence_ttl_s
        )
        self.connections: set[Connection] = set()
        self.accepting = True
        self.metrics = EdgeMetrics()
        self._upgrades = TokenBucket(
            settings.new_connections_per_s, settings.new_connections_burst, time.monotonic()
        )
        self._drain_task: asyncio.Task[None] | None = None
        self._pace = DrainPace(settings.drain_reconnects_per_s)
        self._rate_changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._ctl: SubscriptionHandle | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._presence_refresher: asyncio.Task[None] | None = None
        self._server: Server | None = None
        self._down_since_ms: int | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Upgrades refused in band: answered 101, closed by `_handle` before any frame.
        self._refused: weakref.WeakKeyDictionary[ServerConnection, Refusal] = (
            weakref.WeakKeyDictionary()
        )
        self._drain_secret: str | None = None  # written at start, for `POST /v1/drain`
        self._resuming: asyncio.Task[None] | None = None  # history consumers after a reconnect

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self.flusher = Flusher(asyncio.get_running_loop())
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
        self._drain_secret = write_secret(self._drain_secret_path)
        self._sweeper = asyncio.create_task(self._sweep())
        self._reporter = asyncio.create_task(self._report_stats())
        self._watcher = asyncio.create_task(self.backbone.watch_channels(self.directory.apply))
        self._presence_refresher = asyncio.create_task(self.presence.refresh_forever())

    @property
    def _drain_secret_path(self) -> Path:
        return secret_path(self.port, self.settings.drain_secret_file)

    @property
    def port(self) -> int:
        assert self._server is not None
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    def policy_for(self, channel: str) -> ChannelPolicy:
        return self.directory.policy_for(channel)

    def on_backbone_state(self, connected: bool) -> None:
        """NATS went away or came back; on return, report the gap to clients."""
        now_ms = int(time.time() * 1000)
        if not connected:
            self._down_since_ms = self._down_since_ms or now_ms
            log.warning("backbone lost: publishes and RPCs answer 'unavailable'")
        elif self._down_since_ms is not None:
            self.hub.notify_gap(self._down_since_ms, now_ms)
            self._resuming = asyncio.create_task(self.hub.resume_streams(self._down_since_ms))
            log.info("backbone back after %d ms", now_ms - self._down_since_ms)
            self._down_since_ms = None

    def record_error(self, code: str) -> None:
        self.metrics.errors[code] += 1

    @property
    def draining(self) -> bool:
        return self._drain_task is not None

    def start_drain(self, reason: str) -> asyncio.Task[None]:
        """Begin draining (once); later calls return the same task."""
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain(reason))
        return self._drain_task

    def offer_pace(self, message: Mapping[str, Any] | None) -> bool:
        """A grant or re-pace from the operator; applies at once to a running drain."""
        if not self._pace.offer(message):
            return False
        self._rate_changed.set()
        return True

    async def _drain(self, reason: str) -> None:
        """DESIGN §5: stop accepting, then move clients away at the granted pace.

        Each connection gets `reconnect` (jittered `after_ms`) and a 1001 close;
        at the deadline the rest go at once. Open connections keep working
        until their turn.
        """
        self.accepting = False
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.offer_pace(await self._ask_drain_grant(reason))
        log.info(
            "draining",
            extra={
                "pod": self.settings.pod_name,
                "reason": reason,
                "connections": len(self.connections),
                "rate": self._pace.rate,
            },
        )
        pending = sorted(self.connections, key=lambda c: c.id)
        closing: set[asyncio.Task[None]] = set()
        deadline = started + self.settings.drain_timeout_s
        last_move = started
        while pending:
            due = next_move_at(last_move, self._pace.rate, deadline)
            now = loop.time()
            if now < due:
                self._rate_changed.clear()  # a new grant re-computes `due` at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rate_changed.wait(), due - now)
                continue
            batch = pending if now >= deadline else [pending[0]]
            pending = pending[len(batch) :]
            for conn in batch:
                task = asyncio.create_task(self._move(conn, reason))
                closing.add(task)
                task.add_done_callback(closing.discard)
            last_move = now
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        log.info(
            "drained",
            extra={"pod": self.settings.pod_name, "seconds": round(loop.time() - started, 3)},
        )

    @property
    def resume_secret(self) -> str | None:
        return self.settings.resume_secret or self.settings.jwt_secret

    def resume_token(self, conn: Connection) -> str | None:
        """Claims plus, per subscription, the last offset this edge handed it."""
        secret = self.resume_secret
        if secret is None:
            return None
        subscriptions = [
            {"channel": channel, **conn.position(channel)}
            for channel in sorted(conn.session.subscriptions)
        ]
        return mint_resume(
            secret, conn.session.claims, subscriptions, ttl_s=self.settings.resume_ttl_s
        )

    async def _move(self, conn: Connection, reason: str) -> None:
        after_ms = reconnect_after_ms(self.settings.reconnect_jitter_ms)
        payload = {"resume_token": self.resume_token(conn), "after_ms": after_ms, "reason": reason}
        conn.send(protocol.frame("reconnect", payload))
        # No await since the token was minted: close() stops further deliveries at once,
        # so the client has exactly what the token's offsets say.
        await conn.close(CloseCode.GOING_AWAY, reason)

    async def _ask_drain_grant(self, reason: str) -> dict[str, Any] | None:
        """Request `sb.operator.drain`; None when no operator answers (the default pace
        stays)."""
        body = json.dumps(
            {"pod": self.settings.pod_name, "connections": len(self.connections), "reason": reason}
        ).encode()
        subject = drain_subject(self.settings.subject_prefix)
        try:
            answer = await self.backbone.request(
                subject, body, {}, self.settings.drain_grant_timeout_s
            )
            reply = json.loads(answer.data)
        except (NoResponders, RequestTimeout, Unavailable, ValueError):
            return None
        return reply if isinstance(reply, dict) else None

    async def listen_for_control(self) -> None:
        """`sb.edge.<pod>.ctl`: `{"command": "drain"}` or
        `{"command": "rate", "reconnects_per_second": N}`."""
        subject = control_subject(self.settings.subject_prefix, self.settings.pod_name)
        self._ctl = await self.backbone.subscribe(subject, self._on_control)

    def _on_control(self, delivery: Delivery) -> None:
        try:
            command = json.loads(delivery.data)
            kind = command["command"]
        except (ValueError, KeyError, TypeError):
            answer: dict[str, Any] = {"ok": False, "error": 'expected {"command": ...}'}
        else:
            if kind == "drain":
                self.start_drain(str(command.get("reason", "operator")))
                answer = {"ok": True, "connections": len(self.connections)}
            elif kind == "rate":
                applied = self.offer_pace(command)
                answer = {"ok": True} if applied else {"ok": False, "error": RATE_IGNORED}
            else:
                answer = {"ok": False, "error": f"unknown command {kind!r}"[:200]}
        if not answer["ok"] and answer["error"] != RATE_IGNORED:  # a stale pace is normal
            # NATS lets only the operator publish here; anything refused is a bug or a
            # probe: do nothing, say so, and count it
            self.metrics.control_refused += 1
            log.warning(
                "refused a control message: %s",
                answer["error"],
                extra={"pod": self.settings.pod_name, "bytes": len(delivery.data)},
            )
        if delivery.reply:
            task = asyncio.create_task(
                self.backbone.publish(delivery.reply, json.dumps(answer).encode(), {})
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def shutdown(self, reason: str = "shutdown") -> None:
        """Drain (if not already draining), then stop listening."""
        await self.start_drain(reason)
        for task in (self._sweeper, self._reporter, self._watcher, self._presence_refresher):
            if task is not None:
                task.cancel()
        if self._server is not None:
            remove_secret(self._drain_secret_path)
            self._server.close(close_connections=False)
            await self._server.wait_closed()

    def stats(self) -> dict[str, Any]:
        return {
            "pod": self.settings.pod_name,
            "connections": len(self.connections),
            "subscriptions": self.hub.subscription_count,
            "draining": self.draining,
            "accepting": self.accepting,
            "ts": int(time.time() * 1000),
            "channels": self.directory.usage(
                channel for conn in self.connections for channel in conn.session.subscriptions
            ),
        }

    async def _report_stats(self) -> None:
        """Every `stats_interval_s`, this edge's live numbers into `sb_edges`."""
        while True:
            try:
                await self.backbone.put_edge_stats(
                    self.settings.pod_name, json.dumps(self.stats()).encode()
                )
            except Unavailable as exc:
                log.debug("stats not written: %s", exc)
            except Exception:  # a background loop must outlive any one failure
                log.exception("stats not written")
            await asyncio.sleep(self.settings.stats_interval_s)

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

    def _cors(self, request: Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None:
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = route(request.path)
        if path == WS_PATH:
            with tracing.tracer().start_as_current_span(
                "sb.upgrade", kind=SpanKind.SERVER, attributes={"sb.pod": self.settings.pod_name}
            ) as span:
                refusal = await self._check_upgrade(ws, request)
                in_band = refusal is not None and self._in_band(refusal, request)
                status = 101 if refusal is None or in_band else refusal.status
                span.set_attribute("http.response.status_code", status)
                if refusal is not None and in_band:
                    span.set_attribute("sb.refusal.close_code", refusal.close_code)
            if refusal is None:
                return None
            self.metrics.refusals[refusal.status, "close" if in_band else "http"] += 1
            if in_band:  # 101, then `_handle` closes with the refusal's code at once
                self._refused[ws] = refusal
                return None
            return _response(refusal.status, f"{refusal.reason}\n", headers=refusal.headers)
        if path == "/healthz":
            return _response(200, "ok\n")
        if path == "/readyz":
            ready = self.accepting and self.backbone.connected
            return _response(200 if ready else 503, "ready\n" if ready else "not ready\n")
        if path == "/metrics":
            text = render(
                self.metrics,
                connections=len(self.connections),
                subscriptions=self.hub.subscription_count,
                deliveries=self.hub.delivered,
                dropped=self.hub.dropped,
                nats_connected=self.backbone.connected,
                accepting=self.accepting,
            )
            return _response(200, text, "text/plain; version=0.0.4; charset=utf-8")
        if path == "/v1/tickets":
            return await self._tickets(request)
        if path == "/v1/drain":
            return self._local_drain(ws, request)
        if path == "/dev/token" and self.settings.dev_tokens:
            return self._dev_token(request)
        if path in ("/", "/index.html") and self.settings.demo_page:
            page = resources.files("edge").joinpath("static/demo.html").read_bytes()
            return _response(200, page, "text/html; charset=utf-8")
        if path == "/switchboard.js" and self.settings.demo_page:  # the browser SDK, for the demo
            sdk = resources.files("edge").joinpath("static/switchboard.js").read_bytes()
            return _response(200, sdk, "text/javascript; charset=utf-8")
        return _response(404, "not found\n")

    def _in_band(self, refusal: Refusal, request: Request) -> bool:
        """Refuse with a close after 101 (browsers), not the HTTP status? Never for a
        forbidden Origin: a page from another site learns nothing."""
        if refusal is ORIGIN_REFUSAL:
            return False
        return refuse_in_band(self.settings.in_band_refusals, request.headers.get("Origin"))

    def _origin_ok(self, request: Request) -> bool:
        return origin_allowed(
            request.headers.get("Origin"),
            request.headers.get("Host"),
            self.settings.allowed_origins,
        )

    async def _check_upgrade(self, ws: ServerConnection, request: Request) -> Refusal | None:
        """None with `ws.claims` set, or why not (docs/protocol.md §2, in this order)."""
        if not self._origin_ok(request):
            return ORIGIN_REFUSAL
        if not self.accepting:
            return Refusal(503, "edge is draining", retry_after_s=1)
        if len(self.connections) >= self.settings.max_connections:
            return Refusal(503, "edge is full", retry_after_s=5)
        if not self._upgrades.take(time.monotonic()):
            return Refusal(429, "too many new connections", retry_after_s=1)
        credential = find_credential(
            request.path,
            request.headers.get_all("Sec-WebSocket-Protocol"),
            request.headers.get("Authorization"),
        )
        if credential is None:
            return Refusal(401, "missing credentials")
        assert isinstance(ws, EdgeConnection)
        if credential.kind == "resume":
            secret = self.resume_secret
            if secret is None:
                return Refusal(401, "resume tokens are not enabled")
            try:
                ws.claims, ws.resume = read_resume(secret, credential.value)
            except TokenError as exc:
                return Refusal(401, str(exc))
            return None
        token = credential.value
        if credential.kind == "ticket":
            if not is_ticket_shaped(credential.value):
                return Refusal(401, "malformed ticket")
            try:
                stored = await self.backbone.take_ticket(credential.value)
            except Unavailable:
                return Refusal(503, "ticket store unavailable", retry_after_s=1)
            if stored is None:
                return Refusal(401, "unknown or used ticket")
            record = json.loads(stored)
            if time.time() - record["created"] > self.settings.ticket_ttl_s:
                return Refusal(401, "ticket expired")
            token = record["token"]
        try:
            claims = self.verifier.verify(token)
        except TokenError as exc:
            return Refusal(401, str(exc))
        ws.claims = claims
        return None

    async def _tickets(self, request: Request) -> Response:
        cors = self._cors(request)
        if not self._origin_ok(request):
            return _response(403, "origin not allowed\n")
        if request.method == "OPTIONS":
            return _response(
                204,
                b"",
                headers=cors
                | {
                    "Access-Control-Allow-Methods": "POST",
                    "Access-Control-Allow-Headers": "Authorization",
                    "Access-Control-Max-Age": "600",
                },
            )
        if request.method != "POST":
            return _response(405, "use POST\n", headers={"Allow": "POST, OPTIONS"} | cors)
        credential = find_credential("", [], request.headers.get("Authorization"))
        if credential is None:
            return _response(401, "missing Authorization: Bearer <JWT>\n", headers=cors)
        try:
            self.verifier.verify(credential.value)
        except TokenError as exc:
            return _response(401, f"{exc}\n", headers=cors)
        ticket = new_ticket()
        record = json.dumps({"token": credential.value, "created": time.time()}).encode()
        try:
            await self.backbone.put_ticket(ticket, record)
        except Unavailable:
            return _response(503, "ticket store unavailable\n", headers={"Retry-After": "1"})
        return _json(201, {"ticket": ticket, "expires_in": self.settings.ticket_ttl_s}, cors)

    def _local_drain(self, ws: ServerConnection, request: Request) -> Response:
        """The pod's preStop hook (`switchboard drain`) starts the drain from inside
        the pod; nobody else may: only loopback peers that show the secret this edge
        wrote to its pod-local file (switchboard/contract/localdrain.py) are heard."""
        if request.method != "POST":
            return _response(405, "use POST\n", headers={"Allow": "POST"})
        host = str(ws.remote_address[0]) if ws.remote_address else ""
        if host not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            return _response(403, "drain is only accepted from inside the pod\n")
        given = request.headers.get(DRAIN_SECRET_HEADER, "")
        expected = self._drain_secret
        if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
            return _response(403, "drain needs the pod's drain secret (switchboard drain)\n")
        self.start_drain("prestop")
        return _json(202, {"draining": True, "connections": len(self.connections)})

    def _dev_token(self, request: Request) -> Response:
        """Dev mode only: lets the demo page get a token for any name."""
        sub = parse_qs(urlsplit(request.path).query).get("sub", ["guest"])[0]
        assert self.settings.jwt_secret is not None
        try:
            token = mint_token(self.settings.jwt_secret, sub, ttl_s=3600)
            self.verifier.verify(token)
        except TokenError as exc:
            return _response(400, f"{exc}\n")
        return _json(200, {"token": token})

    # -- connections -----------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        refusal = self._refused.pop(ws, None)
        if refusal is not None:  # refused in band: no session, no hub, no cap slot
            await ws.close(refusal.close_code, refusal.close_reason)
            return
        assert isinstance(ws, EdgeConnection)
        assert ws.claims is not None
        claims: Claims = ws.claims
        # The handshake is over: its headers (~4 KiB) would otherwise live as long
        # as the connection.
        # (websockets keeps `ws.request` as its "handshake done" marker, so only the
        # headers go.)
        if ws.request is not None:
            ws.request.headers = Headers()
        if ws.response is not None:
            ws.response.headers = Headers()
        session = Session(
            claims,
            limits=self.limits,
            policy_for=self.policy_for,
            verify=self.verifier.verify,
            now=asyncio.get_running_loop().time(),
            on_error=self.record_error,
        )
        conn = Connection(self, ws, session, secrets.token_hex(6))
        self.connections.add(conn)
        self.metrics.connections_total += 1
        if log.isEnabledFor(logging.INFO):
            log.info("connected", extra=conn.log_fields())
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            sent = ws.protocol.close_sent  # what we told the peer, else what it told us
            code = conn.closed_with or (sent.code if sent else None) or ws.close_code or 1006
            self.metrics.closes[code] += 1
            if log.isEnabledFor(logging.INFO):
                log.info("disconnected", extra=conn.log_fields() | {"code": code})
