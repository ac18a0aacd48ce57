"""Token bucket and sliding error window; time is passed in, never read."""

from __future__ import annotations

from collections import deque


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ErrorWindow:
    """Counts events in the last `window` seconds; `exceeded` once `limit` is reached."""

    __slots__ = ("_limit", "_times", "_window")

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._times: deque[float] | None = None  # most connections never err: no deque

    def add(self, now: float) -> bool:
        """Record one event; True when `limit` events fall within the window."""
        if self._times is None:
            self._times = deque(maxlen=self._limit)
        self._times.append(now)
        return len(self._times) >= self._limit and now - self._times[0] <= self._window
