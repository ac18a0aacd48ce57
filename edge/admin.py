"""The admin port (DESIGN §2, default 9090): health, readiness, Prometheus
metrics and the server API — never exposed by the client Service.

aiohttp moves the bytes; `edge.api` decides. Every answer of the server API is
JSON, every refusal `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from edge.api import ApiError, ServerApi, parse_body
from edge.metrics import exposition
from edge.node import Node
from switchboard.contract.codes import ErrorCode

log = logging.getLogger("switchboard.edge.admin")

MAX_BODY_BYTES = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[dict[str, Any]]]


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


class Admin:
    """The admin listener of one edge."""

    def __init__(self, node: Node, api: ServerApi) -> None:
        self.node = node
        self.api = api
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        api = self.api
        app.add_routes(
            [
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                web.get("/metrics", self._metrics),
                web.post("/api/v1/publish", self._call(lambda r, b: api.publish(b))),
                web.post("/api/v1/broadcast", self._call(lambda r, b: api.broadcast(b))),
                web.post(
                    "/api/v1/users/{user}/messages",
                    self._call(lambda r, b: api.send_to_user(r.match_info["user"], b)),
                ),
                web.post(
                    "/api/v1/users/{user}/disconnect",
                    self._call(lambda r, b: api.disconnect(r.match_info["user"], b)),
                ),
                web.post(
                    "/api/v1/users/{user}/revoke",
                    self._call(lambda r, b: api.revoke(r.match_info["user"], b)),
                ),
                web.get(
                    "/api/v1/channels/{channel}/presence",
                    self._call(lambda r, b: api.presence(r.match_info["channel"])),
                ),
                web.get(
                    "/api/v1/channels/{channel}/history",
                    self._call(
                        lambda r, b: api.history(
                            r.match_info["channel"], r.query.get("since"), r.query.get("limit")
                        )
                    ),
                ),
            ]
        )
        app.middlewares.append(self._errors_as_json)
        return app

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()

    @property
    def port(self) -> int:
        assert self._runner is not None
        addresses = self._runner.addresses
        return int(addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- health and metrics --------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self.node.ready
        return web.Response(
            status=200 if ready else 503, text="ready\n" if ready else "not ready\n"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = exposition(self.node.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    # -- the server API ------------------------------------------------------------

    def _call(
        self, call: Callable[[web.Request, dict[str, Any]], Awaitable[dict[str, Any]]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            self.api.authorize(request.headers.get("Authorization"))
            body: dict[str, Any] = {}
            if request.method == "POST":
                body = parse_body(await request.read())
            return _json(200, await call(request, body))

        return handle

    @web.middleware
    async def _errors_as_json(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            self.node.metrics.errors[exc.code.value] += 1
            return _json(exc.status, exc.body())
        except web.HTTPException as exc:  # unknown path, wrong method, body too large
            if not request.path.startswith("/api/"):
                raise
            code = ErrorCode.TOO_LARGE if exc.status == 413 else ErrorCode.NOT_FOUND
            if exc.status == 405:
                code = ErrorCode.BAD_REQUEST
            message = f"{request.method} {request.path}: {exc.reason}"
            return _json(exc.status, {"error": {"code": code.value, "message": message}})
        except Exception:
            log.exception("server API call failed", extra={"path": request.path})
            body = {"error": {"code": ErrorCode.INTERNAL.value, "message": "internal error"}}
            return _json(500, body)
