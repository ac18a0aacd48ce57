// The client against real edges and a real nats-server, started by
// tests/browser/test_sdk_node.py, which passes them in the environment:
//   SB_URLS       two edges "ws://…/v1/ws,ws://…/v1/ws"
//   SB_DRAIN_URL, SB_DRAIN_PID  an edge they drain (SIGTERM)
//   SB_REFUSING_URL, SB_REFUSING_PID  an edge they drain that then refuses (1013)
//   SB_STOP_URL, SB_STOP_PID    an edge they freeze (SIGSTOP, then SIGCONT)
//   SB_DRAINED_URL  an edge drained by command (still running): it refuses, in band,
//                   with 1013 `retry after 1000`
//   SB_SECRET     the edges' HS256 secret;    SB_HISTORY  a Channel with history
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { test } from "node:test";

import { connect, SwitchboardError } from "../dist/index.js";

const env = process.env;
const URLS = (env.SB_URLS ?? "").split(",").filter(Boolean);
const wired = URLS.length === 2 && env.SB_SECRET && env.SB_HISTORY;
const HIST = env.SB_HISTORY;
const RUN = Date.now().toString(36); // msg_ids are kept per stream for 2 minutes

function mint(sub, ttlS = 3600, extra = {}) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + ttlS, ...extra })}`;
  return `${body}.${createHmac("sha256", env.SB_SECRET).update(body).digest("base64url")}`;
}

/** Clients made in a test are closed when it ends, passed or not. */
function open(t, options) {
  const made = connect(options);
  t.after(() => made.close());
  return made;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate, timeoutMs = 10_000, what = "condition") {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function recorder(client) {
  const log = { connected: [], disconnected: [], gaps: [] };
  client.on("connected", (c) => log.connected.push(c));
  client.on("disconnected", (d) => log.disconnected.push(d));
  client.on("gap", (g) => log.gaps.push(g));
  return log;
}

/** Publishes n = 0, 1, 2… every `everyMs` through its own client; `acked` lists what the edge stored. */
function publisher(client, channel, everyMs = 20) {
  const state = { acked: [], running: true };
  state.done = (async (t) => {
    for (let n = 0; state.running; n++) {
      try {
        await client.publish(channel, { n }, { msgId: `${RUN}-${channel}-${n}` });
        state.acked.push(n);
      } catch (err) {
        if (!(err instanceof SwitchboardError) || err.code === "closed") return;
        n -= 1; // not stored: the same n again (msg_id keeps it once if it was)
      }
      await sleep(everyMs);
    }
  })();
  return state;
}

test("subscribe, publish, rpc and presence answer with acks or typed errors", { skip: !wired }, async (t) => {
  const client = open(t, { urls: URLS, getToken: () => mint("js-basic") });
  const got = [];
  const sub = client.subscribe(`${HIST}:basic`, (event) => got.push(event));
  const ack = await sub.ready;
  assert.equal(typeof ack.offset, "number");
  assert.equal(typeof ack.epoch, "string");
  assert.equal(ack.resubscribed, false);
  const published = await client.publish(`${HIST}:basic`, { hello: "world" });
  assert.ok(published.offset > ack.offset);
  await until(() => got.length === 1, 5000, "the event");
  assert.deepEqual(got[0].data, { hello: "world" });
  assert.equal(got[0].offset, published.offset);
  assert.equal(got[0].from, "js-basic");

  await assert.rejects(client.rpc("nobody.answers", { q: 1 }), { name: "SwitchboardError", code: "not_found" });
  await assert.rejects(client.publish("bad channel", 1), { code: "bad_request", retryable: false });
  await assert.rejects(client.publish(`${HIST}:basic`, "x".repeat(20_000)), { code: "too_large" });
  await assert.rejects(client.presence("plain:room"), { code: "not_enabled" });
  const refused = client.subscribe("bad channel");
  await assert.rejects(refused.ready, { code: "bad_request" });
  assert.equal(client.state, "connected");
  sub.unsubscribe();
  await client.publish(`${HIST}:basic`, "after unsubscribe");
  await client.rpc("nobody.answers").catch(() => undefined); // a round trip later…
  assert.equal(got.length, 1, "…nothing more was delivered");
  client.close();
  assert.equal(client.state, "closed");
  await assert.rejects(client.publish(`${HIST}:basic`, 1), { code: "closed" });
});

test("a forbidden subscription is refused for good; the connection stays", { skip: !wired }, async (t) => {
  const client = open(t, { urls: URLS, getToken: () => mint("js-limited", 3600, { channels: ["mine:*"] }) });
  const errors = [];
  const sub = client.subscribe("theirs:room", { error: (e) => errors.push(e) });
  await assert.rejects(sub.ready, { code: "forbidden" });
  assert.equal(errors.length, 1);
  await client.subscribe("mine:room").ready;
  assert.equal(client.stats.connects, 1);
  client.close();
});

test("the token is refreshed in-band before expires_at: no reconnect", { skip: !wired }, async (t) => {
  let calls = 0;
  const client = open(t, { urls: URLS, getToken: () => (calls++, mint("js-refresh", 8)) });
  const log = recorder(client);
  await client.subscribe("plain:refresh").ready;
  await sleep(10_000); // the first token is past its exp (and the edge's 5 s leeway is not used)
  assert.equal(log.disconnected.length, 0, JSON.stringify(log.disconnected));
  assert.ok(calls >= 2, `getToken called ${calls} times`);
  assert.equal(client.stats.connects, 1);
  await client.publish("plain:refresh", "still here");
  client.close();
});

test("4001 without refresh: getToken once, reconnect, resubscribe", { skip: !wired }, async (t) => {
  let calls = 0;
  const client = open(t, { urls: URLS, refresh: false, getToken: () => (calls++, mint("js-expiry", calls === 1 ? 3 : 3600)) });
  const log = recorder(client);
  const acks = [];
  const got = [];
  client.subscribe(`${HIST}:expiry`, { event: (e) => got.push(e.data), subscribed: (a) => acks.push(a) });
  await until(() => acks.length === 1, 5000, "the subscription");
  await until(() => acks.length === 2, 10_000, "the resubscription");
  assert.equal(log.disconnected[0].code, 4001);
  assert.equal(log.disconnected[0].willRetry, true);
  assert.equal(log.disconnected[0].delayMs, 0);
  assert.equal(calls, 2);
  assert.equal(acks[1].resubscribed, true);
  assert.equal(acks[1].recovered, true);
  await client.publish(`${HIST}:expiry`, "after");
  await until(() => got.includes("after"), 5000, "an event after the reconnect");
  client.close();
});

test("a dead URL and a failing getToken are failed attempts: back off, next URL", { skip: !wired }, async (t) => {
  const dead = ["ws://127.0.0.1:9/v1/ws", "ws://127.0.0.1:1/v1/ws"]; // nothing listens
  let calls = 0;
  const client = open(t, {
    urls: [...dead, URLS[0]],
    getToken: () => {
      calls += 1;
      if (calls === 1) throw new Error("backend down");
      return mint("js-rotate");
    },
  });
  const log = recorder(client);
  const errors = [];
  client.on("error", (e) => errors.push(e.message));
  await client.ready(15_000);
  assert.equal(log.connected[0].url, URLS[0]);
  assert.deepEqual(
    log.disconnected.map((d) => [d.code, d.url, d.willRetry]),
    [[1006, dead[0], true], [1006, dead[1], true]],
  );
  assert.match(log.disconnected[0].reason, /getToken failed: backend down/);
  assert.ok(log.disconnected[1].delayMs <= 1000, "second failure in a row: U(0, 1 s)");
  assert.deepEqual(errors, ["getToken failed: backend down"]);
  assert.equal(calls, 2);
});

test("tickets: connects with ?ticket= from POST /v1/tickets", { skip: !wired }, async (t) => {
  const client = open(t, { urls: URLS, tickets: true, getToken: () => mint("js-ticket") });
  const log = recorder(client);
  await client.ready();
  assert.equal(log.connected[0].user, "js-ticket");
  client.close();
});

test("a drain moves the client with its resume token: nothing lost, nothing twice", { skip: !wired || !env.SB_DRAIN_PID }, async (t) => {
  const channel = `${HIST}:drain`;
  const client = open(t, { urls: [env.SB_DRAIN_URL, URLS[1]], getToken: () => mint("js-drain") });
  const log = recorder(client);
  const got = [];
  await client.subscribe(channel, (e) => got.push(e.data.n)).ready;
  const backend = open(t, { urls: [URLS[1]], getToken: () => mint("js-backend") });
  const pub = publisher(backend, channel);
  await until(() => got.length >= 25, 10_000, "traffic");
  process.kill(Number(env.SB_DRAIN_PID), "SIGTERM"); // what Kubernetes does: the edge drains
  await until(() => log.connected.length === 2, 15_000, "the move");
  await sleep(500);
  pub.running = false;
  await pub.done;
  await until(() => got.length >= pub.acked.length, 10_000, "every acked event");
  assert.equal(log.disconnected[0].code, 1001);
  assert.equal(log.connected[1].resumed, true);
  assert.equal(log.connected[1].url, URLS[1]);
  assert.deepEqual(got, pub.acked, "in order, none lost, none twice");
  assert.deepEqual(log.gaps, []);
  client.close();
  backend.close();
});

test("a resume token outlives a refused attempt: the next edge still resumes", { skip: !wired || !env.SB_REFUSING_PID }, async (t) => {
  // urls: the drained edge twice, so the attempt after the drain's 1001 fails there
  // (1013 while it drains, 1006 once it is gone); the next one, on URLS[1], must still
  // resume with the drain's token (before the fix the failed attempt used it up).
  const channel = `${HIST}:refused`;
  const refusing = env.SB_REFUSING_URL;
  const client = open(t, { urls: [refusing, refusing, URLS[1]], getToken: () => mint("js-kept") });
  const log = recorder(client);
  const got = [];
  await client.subscribe(channel, (e) => got.push(e.data.n)).ready;
  const backend = open(t, { urls: [URLS[1]], getToken: () => mint("js-backend2") });
  const pub = publisher(backend, channel);
  await until(() => got.length >= 10, 10_000, "traffic");
  process.kill(Number(env.SB_REFUSING_PID), "SIGTERM");
  await until(() => log.connected.length === 2, 20_000, "the move");
  await sleep(300);
  pub.running = false;
  await pub.done;
  await until(() => got.length >= pub.acked.length, 10_000, "every acked event");
  const codes = log.disconnected.map((d) => d.code);
  assert.equal(codes.length, 2);
  assert.equal(codes[0], 1001);
  assert.ok([1013, 1006].includes(codes[1]), `a failed attempt at the drained edge: ${codes[1]}`);
  assert.equal(log.connected[1].url, URLS[1]);
  assert.equal(log.connected[1].resumed, true, "the token survived the failed attempt");
  assert.deepEqual(got, pub.acked, "in order, none lost, none twice");
  assert.deepEqual(log.gaps, []);
});

test("a refusal's `retry after <ms>` parks that URL; the next URL is tried after the usual backoff", { skip: !wired || !env.SB_DRAINED_URL }, async (t) => {
  const client = open(t, { urls: [env.SB_DRAINED_URL, URLS[0]], getToken: () => mint("js-hinted") });
  const log = recorder(client);
  const began = Date.now();
  await client.ready(10_000);
  const took = Date.now() - began;
  assert.equal(log.disconnected.length, 1);
  const refused = log.disconnected[0];
  assert.deepEqual([refused.code, refused.reason, refused.url], [1013, "retry after 1000", env.SB_DRAINED_URL]);
  assert.ok(refused.delayMs <= 500, `the first backoff step, not the hint: ${refused.delayMs}`);
  assert.equal(log.connected[0].url, URLS[0]);
  assert.ok(took < refused.delayMs + 1000, `the next attempt came after ${took} ms`);
});

test("a frozen edge is noticed by the silence probe; the client moves on", { skip: !wired || !env.SB_STOP_PID }, async (t) => {
  const channel = `${HIST}:frozen`;
  const client = open(t, { urls: [env.SB_STOP_URL, URLS[0]], getToken: () => mint("js-frozen"), probeTimeoutMs: 1000 });
  const log = recorder(client);
  const got = [];
  await client.subscribe(channel, (e) => got.push(e.data.n)).ready;
  const backend = open(t, { urls: [URLS[0]], getToken: () => mint("js-backend2") });
  const pub = publisher(backend, channel, 50);
  await until(() => got.length >= 5, 10_000, "traffic");
  const pid = Number(env.SB_STOP_PID);
  process.kill(pid, "SIGSTOP"); // no close, no FIN: the socket just goes quiet
  try {
    await until(() => log.connected.length === 2, 15_000, "the move off the frozen edge");
  } finally {
    process.kill(pid, "SIGCONT");
  }
  pub.running = false;
  await pub.done;
  await until(() => got.length >= pub.acked.length, 10_000, "every acked event");
  assert.equal(log.disconnected[0].code, 4000);
  assert.match(log.disconnected[0].reason, /no answer from the edge/);
  assert.ok(client.stats.probes >= 1);
  assert.deepEqual(got, pub.acked, "recovered with since: in order, none lost, none twice");
  client.close();
  backend.close();
});

test("1009 (message too big) stops the client: no reconnect, calls reject 'closed'", { skip: !wired }, async (t) => {
  const client = open(t, { urls: URLS, getToken: () => mint("js-big") });
  const log = recorder(client);
  await client.ready();
  await assert.rejects(client.publish("plain:big", "x".repeat(70_000)), { code: "disconnected" });
  await until(() => client.state === "closed", 5000, "the stop");
  assert.equal(log.disconnected.length, 1);
  assert.equal(log.disconnected[0].code, 1009);
  assert.equal(log.disconnected[0].willRetry, false);
  assert.equal(client.closedWith.code, 1009);
  await assert.rejects(client.rpc("x"), { code: "closed" });
  await sleep(1000);
  assert.equal(client.stats.connects, 1, "never reconnected");
});
