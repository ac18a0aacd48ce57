"""A connection's bounded outbound buffer.

`websockets`' broadcast helper and a bare `send()` would let a peer that never reads
hold unbounded memory. Every frame for a connection goes through its Outbox:
at most `max_bytes` wait; a push that would exceed it, or frames left pending
longer than `grace_s`, mark the connection for eviction (1013). Pending frames
are coalesced into one WebSocket frame separated by `\n` (DESIGN §3).
"""

from __future__ import annotations


class Outbox:
    __slots__ = ("_bytes", "_frames", "_grace", "_head", "_max", "overflowed", "pending_since")

    def __init__(self, max_bytes: int, grace_s: float) -> None:
        # a list, not a deque: an empty deque costs ~760 bytes, an empty list 56
        self._frames: list[bytes] = []
        self._head = 0  # frames before this index were taken
        self._bytes = 0
        self._max = max_bytes
        self._grace = grace_s
        self.pending_since: float | None = None
        self.overflowed = False

    def push(self, frame: bytes, now: float) -> bool:
        """Queue a frame; False when the buffer is full (the connection must go)."""
        if self.overflowed:
            return False
        size = len(frame) + 1
        if self._bytes + size > self._max:
            self.overflowed = True
            self.clear()
            return False
        if self._head >= len(self._frames):
            self.pending_since = now
        self._frames.append(frame)
        self._bytes += size
        return True

    def take(self, now: float = 0.0, max_frame: int = 65536) -> bytes | None:
        """Pending frames joined into one frame of about `max_frame` bytes at most, or None.

        Bounding the coalesced frame keeps it under common client `max_size`
        defaults (1 MiB) whatever the backlog. Taking counts as progress: what
        is left starts its grace period at `now`.
        """
        frames, start = self._frames, self._head
        if start >= len(frames):
            return None
        end, size = start + 1, len(frames[start]) + 1
        while end < len(frames) and size + len(frames[end]) + 1 <= max_frame:
            size += len(frames[end]) + 1
            end += 1
        data = frames[start] if end == start + 1 else b"\n".join(frames[start:end])
        self._bytes -= size
        if end == len(frames):
            self.clear()
        else:
            self._head = end
            self.pending_since = now
        return data

    def clear(self) -> None:
        self._frames = []
        self._head = 0
        self._bytes = 0
        self.pending_since = None

    def stalled(self, now: float) -> bool:
        """Frames have waited longer than the grace period: the peer is not reading."""
        return self.pending_since is not None and now - self.pending_since > self._grace

    @property
    def pending_bytes(self) -> int:
        return self._bytes
