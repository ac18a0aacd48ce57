"""Writes pending frames for many connections once per event-loop turn, or once
per write window.

A per-connection writer task would cost a task wake-up per delivery and a
coroutine frame per connection. Instead, a connection with new frames asks to
be flushed; one callback writes each such connection's pending frames,
coalesced, straight into its transport. Everything delivered in the same turn
(e.g. a batch of NATS messages) goes out as one frame.

With a write window (`write_delay_ms`, as Centrifugo's `write_delay`), that
callback runs that long after the first request instead of at the end of the
turn: frames of a busy connection that arrive within the window share one
WebSocket frame and one `send`, at the cost of up to the window in latency.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    __slots__ = ("_delay", "_loop", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float = 0.0) -> None:
        self._loop = loop
        self._delay = delay_s
        self._pending: list[Flushable] = []
        self._scheduled = False

    def request(self, target: Flushable) -> None:
        """Flush `target` at the end of this loop turn, or of the write window (callers
        ask once per batch)."""
        self._pending.append(target)
        if not self._scheduled:
            self._scheduled = True
            if self._delay > 0:
                self._loop.call_later(self._delay, self._run)
            else:
                self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for target in pending:
            target.flush()
