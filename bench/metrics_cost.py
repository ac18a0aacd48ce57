"""What the delivery latency histogram costs per message, in process (no sockets).

Feeds stamped backbone messages (`Sb-Ts`, `Sb-Ts-Us`, 100 B JSON) to the edge's
real `Hub` with M members that only count frames, and reports CPU µs per message
(`time.process_time`, so other processes on the machine matter less than in
fanout.py) three ways:

  none       no latency hook (what the edge did before the histogram)
  edge       the edge's hook: EdgeMetrics.observe_latency (a bisect and an increment)
  library    prometheus_client's own Histogram.observe (takes a lock per call)

and the latency step alone for the two hooks (best of 5).

    python bench/metrics_cost.py [--messages 200000] [--members 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry
from prometheus_client import Histogram as LibraryHistogram

from edge.hub import Hub, stamp_headers
from edge.metrics import LATENCY_BUCKETS, EdgeMetrics
from edge.ports import Delivery
from switchboard.contract.channels import channel_subject


class _Handle:
    async def unsubscribe(self) -> None:
        return None


class _Backbone:
    """Keeps the hub's handler so messages can be fed to it directly."""

    def __init__(self) -> None:
        self.handler: Callable[[Delivery], None] | None = None

    async def subscribe(self, subject: str, handler: Callable[[Delivery], None], **_: Any) -> Any:
        self.handler = handler
        return _Handle()


class _Member:
    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames = 0

    def deliver(self, frame: bytes) -> None:
        self.frames += 1

    def deliver_stored(self, channel: str, offset: int, frame: bytes) -> None:
        self.frames += 1


def run(hook: Callable[[float], None] | None, messages: int, members: int) -> float:
    """CPU µs per message through `Hub._deliver` with `hook` as its latency observer."""
    backbone = _Backbone()
    hub = Hub(backbone, "sb", expose_publisher=True, on_latency=hook)  # type: ignore[arg-type]

    async def join() -> None:
        for _ in range(members):
            await hub.join_channel("bench", _Member())

    asyncio.run(join())
    assert backbone.handler is not None
    body = json.dumps({"seq": 0, "pad": "x" * 76}).encode()
    subject = channel_subject("sb", "bench")
    deliveries = [
        Delivery(subject, body, {"Sb-From": "alice", **stamp_headers()}) for _ in range(1000)
    ]
    handler = backbone.handler
    start = time.process_time()
    for n in range(messages):
        handler(deliveries[n % 1000])
    return (time.process_time() - start) / messages * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    library = LibraryHistogram(
        "bench_latency_seconds", "x", buckets=LATENCY_BUCKETS, registry=CollectorRegistry()
    )
    hooks: dict[str, Callable[[float], None] | None] = {
        "none": None,
        "edge": EdgeMetrics().observe_latency,
        "library": library.observe,
    }
    results: dict[str, list[float]] = {name: [] for name in hooks}
    for _ in range(args.rounds):  # interleaved, so a busy moment hits all three alike
        for name, hook in hooks.items():
            results[name].append(run(hook, args.messages, args.members))
    isolated = {name: isolated_us(hook) for name, hook in hooks.items() if hook is not None}
    base = statistics.median(results["none"])
    print(f"{args.messages} messages x {args.members} members, median of {args.rounds} rounds")
    for name, values in results.items():
        median = statistics.median(values)
        print(
            f"  {name:8} {median:6.2f} µs/message  (+{median - base:5.2f})  "
            f"rounds {[round(v, 2) for v in values]}"
        )
    for name, us in isolated.items():
        print(f"  the {name} hook alone (parse Sb-Ts-Us, clock, observe): {us:.2f} µs")
    return 0


def isolated_us(hook: Callable[[float], None], calls: int = 200_000) -> float:
    """CPU µs of the latency step alone: `Hub._latency` with `hook`, best of 5."""
    hub = Hub(_Backbone(), "sb", expose_publisher=True, on_latency=hook)  # type: ignore[arg-type]
    stamp = stamp_headers()["Sb-Ts-Us"]
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            hub._latency(stamp)
        best = min(best, time.process_time() - start)
    return best / calls * 1e6


if __name__ == "__main__":
    sys.exit(main())
