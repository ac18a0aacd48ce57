"""Async Python client for the Switchboard protocol (used by tests and `switchboard client`)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from switchboard.contract.errors import SwitchboardException
from switchboard.contract.wire import (
    SUBPROTOCOL,
    bearer_authorization,
    bearer_subprotocol,
    split_frames,
)


class SwitchboardError(SwitchboardException):
    """An `error` frame answering one of our requests (the JS SDK's `SwitchboardError`)."""

    def __init__(self, code: str, message: str, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


class Closed(SwitchboardException):
    """The connection closed before the answer arrived."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


class Client:
    """One connection; requests are matched to answers by `id`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self.frames_received = 0
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._welcomed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        ticket: str | None = None,
        resume: str | None = None,
        header_token: bool = False,
        origin: str | None = None,
        open_timeout: float = 10,
    ) -> Client:
        subprotocols = [Subprotocol(SUBPROTOCOL)]
        headers: dict[str, str] = {}
        if token and header_token:
            headers["Authorization"] = bearer_authorization(token)
        elif token:
            subprotocols.append(Subprotocol(bearer_subprotocol(token)))
        for name, value in (("ticket", ticket), ("resume", resume)):
            if value:
                url += ("&" if "?" in url else "?") + urlencode({name: value})
        ws = await connect(
            url,
            subprotocols=subprotocols,
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]
            open_timeout=open_timeout,
            max_size=None,
        )
        client = cls(ws)
        async with asyncio.timeout(open_timeout):
            await client._welcomed.wait()
        if not client.welcome:  # closed before `welcome`: refused in band (4001/4003/1013)
            await client._reader
            raise Closed(client.close_code, ws.close_reason or "")
        return client

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.frames_received += 1
                for line in split_frames(frame):
                    self._dispatch(json.loads(line))
        except ConnectionClosed:
            pass
        finally:
            closed = Closed(self.close_code, self.ws.close_reason or "")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(closed)
            self._events.put_nowait(None)
            self._welcomed.set()  # `connect` stops waiting for a welcome that cannot come

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "welcome":
            self.welcome = msg["payload"]
            self._welcomed.set()
            return
        future = self._pending.pop(msg.get("id") or "", None)
        if future is not None and not future.done():
            future.set_result(msg)
        else:
            self._events.put_nowait(msg)

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send(text)

    async def request(self, kind: str, payload: dict[str, Any], timeout: float = 10) -> Any:
        """Send a request and return its answer's payload; error frames raise."""
        request_id = str(next(self._ids))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.ws.send(json.dumps({"type": kind, "id": request_id, "payload": payload}))
        except ConnectionClosed:  # closed before it went out: the same `Closed` as after
            self._pending.pop(request_id, None)
            if future.done():
                future.exception()  # already failed by the reader: nobody else will look
            raise Closed(self.close_code, self.ws.close_reason or "") from None
        async with asyncio.timeout(timeout):
            answer = await future
        if answer["type"] == "error":
            p = answer["payload"]
            raise SwitchboardError(p["code"], p["message"], p["retryable"])
        return answer["payload"]

    async def subscribe(self, channel: str, since: dict[str, Any] | None = None) -> Any:
        payload: dict[str, Any] = {"channel": channel}
        if since is not None:
            payload["since"] = since
        return await self.request("subscribe", payload)

    async def unsubscribe(self, channel: str) -> Any:
        return await self.request("unsubscribe", {"channel": channel})

    async def publish(self, channel: str, data: Any, msg_id: str | None = None) -> Any:
        payload: dict[str, Any] = {"channel": channel, "data": data}
        if msg_id is not None:
            payload["msg_id"] = msg_id
        return await self.request("publish", payload)

    async def rpc(self, method: str, data: Any, timeout_ms: int | None = None) -> Any:
        payload: dict[str, Any] = {"method": method, "data": data}
        if timeout_ms is not None:
            payload["timeout_ms"] = timeout_ms
        return (await self.request("rpc", payload, timeout=(timeout_ms or 30000) / 1000 + 5))[
            "data"
        ]

    async def refresh(self, token: str) -> Any:
        return await self.request("refresh", {"token": token})

    async def next_message(self, timeout: float = 10) -> dict[str, Any]:
        """The next server-initiated frame (event, error without id, reconnect, ...)."""
        async with asyncio.timeout(timeout):
            msg = await self._events.get()
        if msg is None:
            self._events.put_nowait(None)
            raise Closed(self.close_code, self.ws.close_reason or "")
        return msg

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            msg = await self._events.get()
            if msg is None:
                self._events.put_nowait(None)
                return
            yield msg

    async def wait_closed(self, timeout: float = 10) -> int | None:
        async with asyncio.timeout(timeout):
            await self._reader
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self._reader
