"""What tracing costs per delivered message, in process (no sockets, no network).

Feeds backbone messages (100 B JSON) to the edge's real `Hub` with M members that
only count frames, and reports CPU µs per message (`time.process_time`, which counts
the span processor's export thread too) for:

  off            no exporter configured (what every edge without OTEL_* runs):
                 messages that carry a `traceparent` (a traced backend) and not
  on, untraced   tracing on, messages without `traceparent` (nothing to continue)
  on, 1 %        tracing on, 1 % of the messages' parents sampled (parent-based:
                 the other 99 % make a non-recording span)
  on, 100 %      tracing on, every message's parent sampled: a `process` span per
                 message per edge, batched to an exporter that drops the batch (the
                 OTLP encoding and the network are not counted)

    python bench/tracing_cost.py [--messages 100000] [--members 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from edge.hub import Hub
from edge.ports import Delivery
from switchboard import telemetry
from switchboard.contract.channels import channel_subject


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Handle:
    async def unsubscribe(self) -> None:
        return None


class _Backbone:
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


def _headers(sampled_every: int | None, n: int) -> dict[str, str]:
    headers = {"Sb-From": "backend"}
    if sampled_every is not None:
        flags = "01" if n % sampled_every == 0 else "00"
        headers["traceparent"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}"
    return headers


def run(sampled_every: int | None, messages: int, members: int) -> float:
    """CPU µs per message through the hub's delivery."""
    backbone = _Backbone()
    hub = Hub(backbone, "sb", expose_publisher=True)  # type: ignore[arg-type]

    async def join() -> None:
        for _ in range(members):
            await hub.join_channel("bench", _Member())

    asyncio.run(join())
    assert backbone.handler is not None
    body = json.dumps({"seq": 0, "pad": "x" * 76}).encode()
    subject = channel_subject("sb", "bench")
    deliveries = [Delivery(subject, body, _headers(sampled_every, n)) for n in range(1000)]
    handler = backbone.handler
    start = time.process_time()
    for n in range(messages):
        handler(deliveries[n % 1000])
    provider = telemetry._state["provider"]
    if telemetry.enabled():
        provider.force_flush()  # the export thread's work counts
    return (time.process_time() - start) / messages * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    provider = TracerProvider()  # parent-based sampling, as OTEL_TRACES_SAMPLER's default
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=65536))
    # (name, tracing on, a sampled parent every N messages or None: no traceparent)
    modes: list[tuple[str, bool, int | None]] = [
        ("off, untraced messages", False, None),
        ("off, traced messages", False, 1),
        ("on, untraced messages", True, None),
        ("on, 1 % sampled", True, 100),
        ("on, 100 % sampled", True, 1),
    ]
    results: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    telemetry.use(provider)
    for _ in range(args.rounds):  # interleaved, so a busy moment hits every mode alike
        for name, on, every in modes:
            telemetry._state["enabled"] = on
            results[name].append(run(every, args.messages, args.members))
    base = statistics.median(results[modes[0][0]])
    print(f"{args.messages} messages x {args.members} members, median of {args.rounds} rounds")
    for name, values in results.items():
        median = statistics.median(values)
        print(
            f"  {name:24} {median:6.2f} µs/message  (+{median - base:5.2f})  "
            f"rounds {[round(v, 2) for v in values]}"
        )
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
