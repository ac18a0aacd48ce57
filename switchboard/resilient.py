"""A client that stays connected: it follows DESIGN §4's close-code table by itself.

`reconnect` + 1001 → wait `after_ms`, then connect again (to the next URL)
with its resume token, which restores the subscriptions from their offsets;
1008/1011/1013/abnormal drops → full-jitter backoff; 4001 → ask for a fresh
token, then connect; 1000/1003/1007/1009/4003 → stop. After each reconnect it
subscribes to its channels again, from the last offset it saw on channels with
history, and drops events it already had (by offset). Events from every
connection come out of one `events()` stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.exceptions import InvalidStatus

from switchboard.backoff import full_jitter
from switchboard.client import Client, Closed
from switchboard.codes import ReconnectAdvice, close_advice

log = logging.getLogger("switchboard.client")

TokenSource = Callable[[], Awaitable[str]]


class ResilientClient:
    def __init__(
        self,
        urls: list[str],
        token: TokenSource,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._urls = itertools.cycle(urls)
        self._token = token
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.channels: list[str] = []
        self.positions: dict[str, dict[str, Any]] = {}  # channel -> {offset, epoch} last seen
        self.recoveries: list[dict[str, Any]] = []  # acks of re-subscriptions with `since`
        self.client: Client | None = None
        self.connections = 0  # how many times a connection was made
        self.resumed = 0  # of which with a resume token
        self.stopped_with: int | None = None
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._run())
        await self._connected.wait()

    async def subscribe(self, channel: str) -> Any:
        if channel not in self.channels:
            self.channels.append(channel)
        ack = await (await self._current()).subscribe(channel)
        if ack.get("offset") is not None and channel not in self.positions:
            self.positions[channel] = {"offset": ack["offset"], "epoch": ack["epoch"]}
        return ack

    async def publish(self, channel: str, data: Any) -> Any:
        return await (await self._current()).publish(channel, data)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while (msg := await self._events.get()) is not None:
            yield msg

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self.client is not None:
            await self.client.close()
        self._events.put_nowait(None)

    async def _current(self) -> Client:
        await self._connected.wait()
        assert self.client is not None
        return self.client

    async def _run(self) -> None:
        attempt = 0
        token = await self._token()
        resume: str | None = None  # from the last `reconnect`: restores subscriptions
        while True:
            url = next(self._urls)
            try:
                if resume is not None:
                    client = await Client.connect(url, resume=resume)
                else:
                    client = await Client.connect(url, token=token)
            except (InvalidStatus, OSError, TimeoutError) as exc:
                status = exc.response.status_code if isinstance(exc, InvalidStatus) else None
                if status == 401 and resume is not None:
                    resume = None  # expired or refused: plain token and `since` instead
                elif status == 401:
                    token = await self._token()
                delay = full_jitter(attempt, self._rng)
                log.info("connect to %s failed (%s); retrying in %.2fs", url, status or exc, delay)
                attempt += 1
                await self._sleep(delay)
                continue
            attempt = 0
            self.client = client
            self.connections += 1
            if resume is not None:
                self.resumed += 1
            else:  # with a resume token the edge restores the subscriptions itself
                for channel in self.channels:
                    since = self.positions.get(channel)
                    self._recovered(channel, await client.subscribe(channel, since=since), since)
            resume = None
            self._connected.set()
            after_ms, resume = await self._pump(client)
            self._connected.clear()
            code = client.close_code
            advice = close_advice(code if code is not None else 1006)
            if advice is ReconnectAdvice.NEVER:
                self.stopped_with = code
                self._events.put_nowait(None)
                return
            if advice is not ReconnectAdvice.AFTER_MS:
                resume = None
            if advice is ReconnectAdvice.NEW_TOKEN:
                token = await self._token()
            if advice is ReconnectAdvice.AFTER_MS and after_ms is not None:
                await self._sleep(after_ms / 1000)
            else:
                await self._sleep(full_jitter(attempt, self._rng))
                attempt += 1

    def _recovered(self, channel: str, ack: dict[str, Any], since: object) -> None:
        """Note a re-subscription's outcome; after a gap, count from where it stands."""
        if since is None:
            return
        self.recoveries.append(ack)
        if not ack.get("recovered"):
            self.positions[channel] = {"offset": ack["offset"], "epoch": ack["epoch"]}

    def _seen_before(self, event: dict[str, Any]) -> bool:
        """Track the position on channels with history; True for an event already had."""
        offset, epoch = event.get("offset"), event.get("epoch")
        if offset is None:
            return False
        last = self.positions.get(event["channel"])
        if last is not None and last["epoch"] == epoch and offset <= last["offset"]:
            return True
        self.positions[event["channel"]] = {"offset": offset, "epoch": epoch}
        return False

    async def _pump(self, client: Client) -> tuple[int | None, str | None]:
        """Forward events until the connection ends; `after_ms` and resume token of a
        `reconnect`, if one came."""
        after_ms: int | None = None
        resume: str | None = None
        try:
            async for msg in client.events():
                kind = msg.get("type")
                if kind == "reconnect":
                    after_ms = int(msg["payload"].get("after_ms", 0))
                    resume = msg["payload"].get("resume_token")
                if kind == "ack" and str(msg.get("id", "")).startswith("resume:"):
                    channel = msg["payload"]["channel"]
                    self._recovered(channel, msg["payload"], self.positions.get(channel))
                if msg.get("type") == "event" and self._seen_before(msg["payload"]):
                    continue
                self._events.put_nowait(msg)
        except Closed:
            pass
        return after_ms, resume
