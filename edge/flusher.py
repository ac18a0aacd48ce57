"""Writes pending frames for many connections once per event-loop turn.

A per-connection writer task would cost a task wake-up per delivery and a
coroutine frame per connection. Instead, a connection with new frames asks to
be flushed; one callback per loop turn writes each such connection's pending
frames, coalesced, straight into its transport. Everything delivered in the
same turn (e.g. a batch of NATS messages) goes out as one frame, and nothing
waits on a timer.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    __slots__ = ("_loop", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Flushable] = []
        self._scheduled = False

    def request(self, target: Flushable) -> None:
        """Flush `target` at the end of this loop turn (callers ask once per batch)."""
        self._pending.append(target)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for target in pending:
            target.flush()
