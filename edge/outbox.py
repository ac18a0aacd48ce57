"""A connection's bounded outbound buffer.

`websockets.broadcast()` and `send()` alone would let a peer that never reads
hold unbounded memory. Every frame for a connection goes through its Outbox:
at most `max_bytes` wait; a push that would exceed it, or frames left pending
longer than `grace_s`, mark the connection for eviction (1013). Pending frames
are coalesced into one WebSocket frame separated by `\n` (DESIGN §3).
"""

from __future__ import annotations

from collections import deque


class Outbox:
    __slots__ = ("_bytes", "_frames", "_grace", "_max", "overflowed", "pending_since")

    def __init__(self, max_bytes: int, grace_s: float) -> None:
        self._frames: deque[str] = deque()
        self._bytes = 0
        self._max = max_bytes
        self._grace = grace_s
        self.pending_since: float | None = None
        self.overflowed = False

    def push(self, text: str, now: float) -> bool:
        """Queue a frame; False when the buffer is full (the connection must go)."""
        if self.overflowed:
            return False
        size = len(text) + 1
        if self._bytes + size > self._max:
            self.overflowed = True
            self.clear()
            return False
        if not self._frames:
            self.pending_since = now
        self._frames.append(text)
        self._bytes += size
        return True

    def take(self, max_frame: int = 65536) -> str | None:
        """Pending frames joined into one text of about `max_frame` at most, or None.

        Bounding the coalesced frame keeps it under common client `max_size`
        defaults (1 MiB) whatever the backlog.
        """
        frames = self._frames
        if not frames:
            return None
        first = frames.popleft()
        taken, size = [first], len(first) + 1
        while frames and size + len(frames[0]) + 1 <= max_frame:
            text = frames.popleft()
            taken.append(text)
            size += len(text) + 1
        self._bytes -= size
        self.pending_since = self.pending_since if frames else None
        return first if len(taken) == 1 else "\n".join(taken)

    def clear(self) -> None:
        self._frames.clear()
        self._bytes = 0
        self.pending_since = None

    def stalled(self, now: float) -> bool:
        """Frames have waited longer than the grace period: the peer is not reading."""
        return self.pending_since is not None and now - self.pending_since > self._grace

    @property
    def pending_bytes(self) -> int:
        return self._bytes
