"""A client that stays connected: it follows DESIGN §4's close-code table by itself.

`reconnect` + 1001 → wait `after_ms`, then connect again (to the next URL)
with its resume token, which restores the subscriptions from their offsets;
1008/1011/1013/abnormal drops → full-jitter backoff, or, when the edge named a
delay (an HTTP refusal's `Retry-After`, a 1013 `retry after <ms>`), that delay
stretched by U(1, 1.5) so refused clients do not return together; 4001 → ask for a fresh
token, then connect; 1000/1003/1007/1009/4003 → stop. After each reconnect it
subscribes to its channels again, from the last offset it saw on channels with
history, and drops events it already had (by offset). Events from every
connection come out of one `events()` stream.

Every failure on the way back (a refused handshake, a close or an error frame
answering a re-subscription, a timeout, the token source raising) is handled
like a dropped connection: back off and try again. Only the "do not reconnect"
codes stop it, and `stopped_with` / `stop_reason` say why.
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

from switchboard.client.backoff import (
    full_jitter,
    hinted_delay,
    retry_after_header,
    retry_after_reason,
)
from switchboard.client.connection import Client, Closed, SwitchboardError
from switchboard.contract.codes import CloseCode, ReconnectAdvice, close_advice
from switchboard.contract.errors import SwitchboardException

log = logging.getLogger("switchboard.client")

TokenSource = Callable[[], Awaitable[str]]


# HTTP refusals of the upgrade, read as the close codes a browser would get in band
STATUS_ADVICE: dict[int, ReconnectAdvice] = {
    401: ReconnectAdvice.NEW_TOKEN,
    403: ReconnectAdvice.NEVER,
}


class Stopped(SwitchboardException):
    """The client stopped for good (a "do not reconnect" close or refusal)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"stopped: {code} {reason}")
        self.code = code
        self.reason = reason


class _Failed(Exception):
    """A connection or re-subscription failed; what to do next and why."""

    def __init__(
        self,
        advice: ReconnectAdvice,
        code: int | None,
        reason: str,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.advice = advice
        self.code = code
        self.reason = reason
        self.retry_after_s = retry_after_s  # the edge's own hint for the next attempt


def _failure(exc: BaseException) -> _Failed:
    """Map anything that went wrong on the way (back) onto the close-code table."""
    if isinstance(exc, _Failed):
        return exc
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        advice = STATUS_ADVICE.get(status, ReconnectAdvice.BACKOFF)
        hint = retry_after_header(exc.response.headers.get("Retry-After"))
        return _Failed(advice, status, f"HTTP {status}", hint)
    if isinstance(exc, Closed):
        code = exc.code if exc.code is not None else 1006
        hint = retry_after_reason(exc.reason) if code == CloseCode.TRY_AGAIN_LATER else None
        return _Failed(close_advice(code), code, exc.reason or f"closed {code}", hint)
    if isinstance(exc, SwitchboardError):
        return _Failed(ReconnectAdvice.BACKOFF, None, f"re-subscription refused: {exc}")
    return _Failed(ReconnectAdvice.BACKOFF, None, repr(exc))


class ResilientClient:
    def __init__(
        self,
        urls: list[str],
        token: TokenSource,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        timeout_s: float = 10.0,
    ) -> None:
        self._urls = itertools.cycle(urls)
        self._url_count = len(urls)
        self._token = token
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._timeout_s = timeout_s
        self.channels: list[str] = []
        self.positions: dict[str, dict[str, Any]] = {}  # channel -> {offset, epoch} last seen
        self.recoveries: list[dict[str, Any]] = []  # acks of re-subscriptions with `since`
        self.failures: list[str] = []  # why each attempt or connection ended, in order
        self.client: Client | None = None
        self.connections = 0  # how many times a connection was made
        self.resumed = 0  # of which with a resume token
        self.duplicates = 0  # events dropped as already seen (by offset): none, normally
        self.stopped_with: int | None = None
        self.stop_reason: str | None = None
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect; returns once connected (raises Stopped if refused for good)."""
        self._runner = asyncio.create_task(self._run())
        await self._current()

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
        self._events.put_nowait(None)  # every later reader ends too

    async def close(self) -> None:
        """Stop reconnecting and close; never raises for what already went wrong."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        self._events.put_nowait(None)

    async def _current(self) -> Client:
        """The live connection, once there is one."""
        if not self._connected.is_set():
            waits = [asyncio.ensure_future(e.wait()) for e in (self._connected, self._stopped)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        if self._stopped.is_set() or self.client is None:
            raise Stopped(self.stopped_with, self.stop_reason or "stopped")
        return self.client

    def _stop(self, failure: _Failed) -> None:
        self.stopped_with = failure.code
        self.stop_reason = failure.reason
        log.warning("stopped for good: %s (%s)", failure.reason, failure.code)
        self._stopped.set()
        self._events.put_nowait(None)

    async def _run(self) -> None:
        attempt = 0
        token: str | None = None
        resume: str | None = None  # from the last `reconnect`: restores subscriptions
        while True:
            client: Client | None = None
            after_ms: int | None = None
            try:
                if token is None:
                    token = await self._token()
                client, resumed = await self._connect(token, resume)
                self.client = client
                self.connections += 1
                if resumed:
                    self.resumed += 1
                else:  # with a resume token the edge restores the subscriptions itself
                    await self._resubscribe(client)
                resume = None
                attempt = 0
                self._connected.set()
                after_ms, resume = await self._pump(client)
                code = client.close_code if client.close_code is not None else 1006
                raise _Failed(close_advice(code), code, client.ws.close_reason or "closed")
            except Exception as exc:
                failure = _failure(exc)
            self._connected.clear()
            if client is not None and client.close_code is None:
                with contextlib.suppress(Exception):
                    await client.close()
            self.failures.append(failure.reason)
            if failure.advice is ReconnectAdvice.NEVER:
                self._stop(failure)
                return
            if failure.advice is not ReconnectAdvice.AFTER_MS and client is not None:
                # A resume token outlives refusals of the attempt to use it (a pod
                # still draining, full, over its rate): it is the client's place in
                # every channel. Only a session that ran and ended otherwise drops it.
                resume = None
            if failure.advice is ReconnectAdvice.NEW_TOKEN:
                token = None
            if failure.advice is ReconnectAdvice.AFTER_MS and after_ms is not None:
                await self._sleep(after_ms / 1000)
            else:
                # The edge's hint is for itself: with other URLs, the next is tried
                # after the usual backoff.
                if failure.retry_after_s is not None and self._url_count == 1:
                    delay = hinted_delay(failure.retry_after_s, self._rng)
                else:
                    delay = full_jitter(attempt, self._rng)
                log.info("%s; reconnecting in %.2fs", failure.reason, delay)
                attempt += 1
                await self._sleep(delay)

    async def _connect(self, token: str, resume: str | None) -> tuple[Client, bool]:
        """A connection to the next URL, and whether the resume token was taken (if not,
        the edge restored nothing: the caller subscribes again)."""
        url = next(self._urls)
        if resume is not None:
            try:
                client = await Client.connect(url, resume=resume, open_timeout=self._timeout_s)
                return client, True
            except (InvalidStatus, Closed) as exc:
                failure = _failure(exc)
                if failure.advice is not ReconnectAdvice.NEW_TOKEN:
                    raise
                # expired or refused: the plain token and `since` instead
                log.info("resume token refused (%s); subscribing from offsets", failure.reason)
        return await Client.connect(url, token=token, open_timeout=self._timeout_s), False

    async def _resubscribe(self, client: Client) -> None:
        for channel in self.channels:
            since = self.positions.get(channel)
            async with asyncio.timeout(self._timeout_s):
                ack = await client.subscribe(channel, since=since)
            self._recovered(channel, ack, since)

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
                if str(msg.get("id", "")).startswith("resume:"):
                    if kind == "error":  # a subscription the token listed was not restored
                        raise SwitchboardError(
                            msg["payload"].get("code", "error"),
                            msg["payload"].get("message", ""),
                            bool(msg["payload"].get("retryable")),
                        )
                    channel = msg["payload"]["channel"]
                    self._recovered(channel, msg["payload"], self.positions.get(channel))
                if msg.get("type") == "event" and self._seen_before(msg["payload"]):
                    self.duplicates += 1
                    continue
                self._events.put_nowait(msg)
        except Closed:
            pass
        return after_ms, resume
