"""The edge's plain HTTP routes next to the WebSocket upgrade: tickets, the pod-local
drain, and in dev mode a token and the demo page. Health, readiness and metrics are
on the admin port (edge/admin.py), never the client port (DESIGN §2)."""

from __future__ import annotations

import hmac
import json
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Response

from edge.admission import Admission
from edge.control import Control
from edge.http import HttpRequest as Request
from edge.node import Node
from edge.ports import Unavailable
from edge.transport import ClientSocket
from edge.upgrade import find_credential, new_ticket, token_refusal
from switchboard.contract.localdrain import HEADER as DRAIN_SECRET_HEADER
from switchboard.contract.tokens import TokenError, mint_token


def response(
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


def json_response(
    status: int, obj: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return response(status, json.dumps(obj), "application/json", headers)


class Routes:
    """Answers every HTTP request that is not a WebSocket upgrade."""

    def __init__(self, node: Node, control: Control, admission: Admission) -> None:
        self.node = node
        self.control = control
        self.admission = admission
        self.settings = node.settings
        self.verifier = admission.verifier
        self.drain_secret: str | None = None  # written at start, for `POST /v1/drain`

    async def answer(self, ws: ClientSocket, request: Request, path: str) -> Response:
        if path == "/v1/tickets":
            return await self._tickets(request)
        if path == "/v1/drain":
            return self._local_drain(ws, request)
        if path == "/dev/token" and self.settings.dev_tokens:
            return self._dev_token(request)
        if path in ("/", "/index.html") and self.settings.demo_page:
            page = resources.files("edge").joinpath("static/demo.html").read_bytes()
            return response(200, page, "text/html; charset=utf-8")
        if path == "/switchboard.js" and self.settings.demo_page:  # the browser SDK, for the demo
            sdk = resources.files("edge").joinpath("static/switchboard.js").read_bytes()
            return response(200, sdk, "text/javascript; charset=utf-8")
        return response(404, "not found\n")

    def _cors(self, request: Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None:
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    async def _tickets(self, request: Request) -> Response:
        cors = self._cors(request)
        if not self.admission.origin_ok(request):
            return response(403, "origin not allowed\n")
        if request.method == "OPTIONS":
            return response(
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
            return response(405, "use POST\n", headers={"Allow": "POST, OPTIONS"} | cors)
        credential = find_credential("", [], request.headers.get("Authorization"))
        if credential is None:
            return response(401, "missing Authorization: Bearer <JWT>\n", headers=cors)
        try:
            await self.admission.verify(credential.value)
        except TokenError as exc:
            refusal = token_refusal(exc)
            return response(refusal.status, f"{exc}\n", headers=cors)
        ticket = new_ticket()
        record = json.dumps({"token": credential.value, "created": time.time()}).encode()
        try:
            await self.node.backbone.put_ticket(ticket, record)
        except Unavailable:
            return response(503, "ticket store unavailable\n", headers={"Retry-After": "1"})
        return json_response(
            201, {"ticket": ticket, "expires_in": self.settings.ticket_ttl_s}, cors
        )

    def _local_drain(self, ws: ClientSocket, request: Request) -> Response:
        """The pod's preStop hook (`switchboard drain`) starts the drain from inside
        the pod; nobody else may: only loopback peers that show the secret this edge
        wrote to its pod-local file (switchboard/contract/localdrain.py) are heard."""
        if request.method != "POST":
            return response(405, "use POST\n", headers={"Allow": "POST"})
        host = str(ws.remote_address[0]) if ws.remote_address else ""
        if host not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            return response(403, "drain is only accepted from inside the pod\n")
        given = request.headers.get(DRAIN_SECRET_HEADER, "")
        expected = self.drain_secret
        if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
            return response(403, "drain needs the pod's drain secret (switchboard drain)\n")
        self.control.start_drain("prestop")
        return json_response(202, {"draining": True, "connections": len(self.node.members)})

    def _dev_token(self, request: Request) -> Response:
        """Dev mode only: lets the demo page get a token for any name."""
        sub = parse_qs(urlsplit(request.path).query).get("sub", ["guest"])[0]
        assert self.settings.jwt_secret is not None
        try:
            token = mint_token(self.settings.jwt_secret, sub, ttl_s=3600)
            self.verifier.verify(token)
        except TokenError as exc:
            return response(400, f"{exc}\n")
        return json_response(200, {"token": token})
