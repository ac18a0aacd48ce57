// Pure logic of the client: backoff, the close-code table, frame splitting, dedupe.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  BACKOFF_CAP_MS,
  closeAdvice,
  fullJitter,
  hintedDelay,
  Positions,
  retryAfterMs,
  splitFrame,
  SwitchboardError,
} from "../dist/index.js";

test("full jitter: uniform below 0.5 s doubling, capped at 20 s", () => {
  assert.equal(fullJitter(0, () => 0.999999) < 500, true);
  assert.equal(Math.round(fullJitter(0, () => 1)), 500);
  assert.equal(Math.round(fullJitter(1, () => 1)), 1000);
  assert.equal(Math.round(fullJitter(5, () => 1)), 16000);
  assert.equal(fullJitter(6, () => 1), BACKOFF_CAP_MS);
  assert.equal(fullJitter(1000, () => 1), BACKOFF_CAP_MS);
  assert.equal(fullJitter(3, () => 0), 0);
  const samples = Array.from({ length: 2000 }, () => fullJitter(2));
  assert.ok(Math.min(...samples) < 200 && Math.max(...samples) > 1800, "spread over [0, 2000)");
});

test("a refusal's hint: waited at least, stretched up to half again, capped", () => {
  assert.equal(hintedDelay(1000, () => 0), 1000);
  assert.equal(hintedDelay(1000, () => 0.999999) < 1500, true);
  assert.equal(hintedDelay(1000, () => 1), 1500);
  assert.equal(hintedDelay(60_000, () => 0), BACKOFF_CAP_MS);
  assert.equal(hintedDelay(5000, () => 0.5, 6000), 6000);
  const samples = Array.from({ length: 2000 }, () => hintedDelay(2000));
  assert.ok(Math.min(...samples) >= 2000 && Math.max(...samples) <= 3000, "within [hint, 1.5 hint]");
  assert.ok(Math.min(...samples) < 2050 && Math.max(...samples) > 2950, "spread over it");
});

test("close codes: exactly the table of docs/protocol.md §10", () => {
  const table = {
    1000: "stop", 1001: "after_ms", 1003: "stop", 1006: "backoff", 1007: "stop",
    1008: "backoff", 1009: "stop", 1011: "backoff", 1013: "backoff", 4000: "backoff",
    4001: "new_token", 4003: "stop", 4999: "backoff",
  };
  for (const [code, advice] of Object.entries(table)) assert.equal(closeAdvice(Number(code)), advice, code);
  assert.equal(retryAfterMs("retry after 1500"), 1500);
  assert.equal(retryAfterMs("slow consumer"), null);
  assert.equal(retryAfterMs("retry after soon"), null);
});

test("frames: split on newlines, bad lines skipped, payload always an object", () => {
  const frames = splitFrame(
    '{"type":"ack","id":"2","payload":{"channel":"a"}}\n{"type":"event","payload":{"channel":"a","data":"x\\ny"}}\n',
  );
  assert.deepEqual(frames, [
    { type: "ack", id: "2", payload: { channel: "a" } },
    { type: "event", id: undefined, payload: { channel: "a", data: "x\ny" } },
  ]);
  assert.deepEqual(splitFrame('not json\n[1]\n{"type":3}\n{"type":"gap","payload":[]}'), [
    { type: "gap", id: undefined, payload: {} },
  ]);
  assert.deepEqual(splitFrame(""), []);
});

test("positions: replayed events are dropped by offset within one epoch", () => {
  const positions = new Positions();
  positions.start("c", 10, "e1");
  assert.equal(positions.seen("c", 10, "e1"), true);
  assert.equal(positions.seen("c", 11, "e1"), false);
  assert.equal(positions.seen("c", 11, "e1"), true);
  assert.equal(positions.seen("c", 9, "e1"), true);
  assert.deepEqual(positions.get("c"), { offset: 11, epoch: "e1" });
  // another epoch: the stream was recreated, offsets start over
  assert.equal(positions.seen("c", 1, "e2"), false);
  assert.deepEqual(positions.get("c"), { offset: 1, epoch: "e2" });
  // an older ack does not move a newer position back; a reset does
  positions.start("c", 0, "e2");
  assert.deepEqual(positions.get("c"), { offset: 1, epoch: "e2" });
  positions.reset("c", 0, "e2");
  assert.deepEqual(positions.get("c"), { offset: 0, epoch: "e2" });
  // channels without history have no position and nothing is ever dropped
  assert.equal(positions.seen("plain", undefined, undefined), false);
  assert.equal(positions.seen("plain", undefined, undefined), false);
  assert.equal(positions.get("plain"), undefined);
});

test("errors carry the stable code", () => {
  const error = new SwitchboardError("forbidden", "no", false);
  assert.ok(error instanceof Error);
  assert.equal(error.code, "forbidden");
  assert.equal(error.retryable, false);
  assert.equal(error.name, "SwitchboardError");
});
