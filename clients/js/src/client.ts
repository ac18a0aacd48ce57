/**
 * The client: one connection at a time, kept up by the close-code table.
 *
 * A loop makes connection attempts, rotating across `urls`: a drain's 1001 waits
 * `after_ms` and comes back with the resume token; 4001 asks `getToken()` again;
 * 1000/1003/1007/1009/4003 stop; anything else (including every failed attempt,
 * failed resubscription and silent connection) backs off with full jitter. After
 * each reconnect the subscriptions are taken again from the last offset each one
 * delivered, and events delivered before are dropped (by offset, within an epoch).
 *
 * Where WebSockets cannot get through (`transport: "auto"`), the same loop runs over
 * the fallback (sse.ts): an SSE stream with the subscriptions' positions as
 * `Last-Event-ID`, requests as POSTs; a WebSocket is tried in the background and the
 * client moves back as soon as one is welcomed.
 */

import { BACKOFF_CAP_MS, fullJitter, hintedDelay } from "./backoff.js";
import { closeAdvice, retryAfterMs } from "./codes.js";
import { Emitter } from "./emitter.js";
import { SwitchboardError } from "./errors.js";
import type { Frame } from "./frames.js";
import { CLIENT_ABORT, Link, SUBPROTOCOL, WsLink, type Closure, type TransportKind } from "./link.js";
import { Liveness } from "./liveness.js";
import { Positions } from "./positions.js";
import { SseLink } from "./sse.js";
import { expiresAtMs, resumedChannels } from "./tokens.js";
import type {
  ChannelEvent,
  ClientEvents,
  ConnectOptions,
  Gap,
  PresenceChange,
  PublishAck,
  State,
  Stats,
  Subscribed,
  Subscription,
  SubscriptionHandlers,
  WebSocketLike,
} from "./types.js";

const CHANNEL = /^[A-Za-z0-9_-]+(:[A-Za-z0-9_-]+)*$/;
/** The probe: an `unsubscribe` the edge always acks and that changes nothing. */
const PROBE_CHANNEL = "_sb-probe";
/** Tokens expiring within this long are replaced before an attempt (the edge allows 5 s). */
const TOKEN_SLACK_MS = 2_000;

interface Entry {
  channel: string;
  handlers: Set<SubscriptionHandlers<unknown>>;
  ready: Promise<Subscribed>;
  resolveReady: (ack: Subscribed) => void;
  rejectReady: (error: SwitchboardError) => void;
  acked: boolean; // ever: a later ack is a resubscription
  ackedOn: Link | null; // the connection whose ack it last got
  link: Link | null; // the connection its subscription was last sent on
}

interface Outcome extends Closure {
  established: boolean;
  link: Link | null;
}

type Waiter = { resolve: (link: Link) => void; reject: (error: SwitchboardError) => void };

export class Client {
  /** Connection state; listen to `state` for changes. */
  state: State = "connecting";
  /** Why the client stopped, once `state` is `closed`. */
  closedWith: { code: number; reason: string } | null = null;
  readonly stats: Stats = { connects: 0, resumes: 0, duplicatesDropped: 0, probes: 0 };
  /** The transport in use (or tried next): `websocket`, or `sse` on the fallback. */
  transport: TransportKind;

  private readonly urls: string[];
  private readonly events = new Emitter<ClientEvents>();
  private readonly entries = new Map<string, Entry>();
  private readonly positions = new Positions();
  private readonly blockedUntil = new Map<string, number>(); // 1013 `retry after <ms>`
  private readonly waiters = new Set<Waiter>();
  private readonly WS: WebSocketLike;
  private readonly fetchFn: typeof fetch | undefined;
  private readonly random: () => number;
  private nextUrl = 0;
  private nextId = 1;
  private token: string | null = null;
  private resumeToken: string | null = null;
  private link: Link | null = null;
  private stopped = false;
  private lostAt = 0;
  private wake: (() => void) | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private liveness: Liveness | null = null;
  private readonly unwatch: () => void;
  private wsFailures = 0; // WebSocket attempts failed in a row
  private wsRetryTimer: ReturnType<typeof setTimeout> | null = null;
  private probed = false;

  constructor(private readonly options: ConnectOptions) {
    this.urls = typeof options.urls === "string" ? [options.urls] : [...options.urls];
    if (this.urls.length === 0) throw new TypeError("connect() needs at least one URL");
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketLike }).WebSocket;
    if (!WS) throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    this.WS = WS;
    this.fetchFn = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.random = options.random ?? Math.random;
    this.transport = options.transport === "sse" ? "sse" : "websocket";
    this.unwatch = this.watchNetwork();
    void this.run();
  }

  // -- public API ----------------------------------------------------------

  on<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): () => void {
    return this.events.on(event, listener);
  }

  /** Subscribe to a channel; kept across reconnects until `unsubscribe()`. */
  subscribe<T = unknown>(
    channel: string,
    handlers: SubscriptionHandlers<T> | ((event: ChannelEvent<T>) => void) = {},
  ): Subscription {
    const own: SubscriptionHandlers<unknown> = (
      typeof handlers === "function" ? { event: handlers } : handlers
    ) as SubscriptionHandlers<unknown>;
    if (!CHANNEL.test(channel) || channel.length > 200) {
      const error = new SwitchboardError("bad_request", `invalid channel name '${channel}'`);
      const ready = Promise.reject(error);
      ready.catch(() => undefined);
      return { channel, ready, unsubscribe: () => undefined };
    }
    let entry = this.entries.get(channel);
    if (!entry) {
      entry = this.newEntry(channel);
      this.entries.set(channel, entry);
      if (this.stopped) entry.rejectReady(this.closedError());
      else if (this.link && this.state === "connected") this.subscribeOn(this.link, entry, false);
    }
    entry.handlers.add(own);
    const current = entry;
    let active = true;
    return {
      channel,
      ready: current.ready,
      unsubscribe: () => {
        if (!active) return;
        active = false;
        current.handlers.delete(own);
        if (current.handlers.size === 0 && this.entries.get(channel) === current) {
          this.entries.delete(channel);
          this.positions.forget(channel);
          current.rejectReady(new SwitchboardError("closed", "unsubscribed"));
          const link = this.link;
          if (link && this.state === "connected") {
            const id = this.id();
            link.request(id, "unsubscribe", { channel }, this.requestTimeout).catch(() => undefined);
          }
        }
      },
    };
  }

  /** Publish `data`; resolves with the edge's ack (`offset` on channels with history). */
  async publish(
    channel: string,
    data: unknown,
    options: { msgId?: string; timeoutMs?: number } = {},
  ): Promise<PublishAck> {
    const payload: Record<string, unknown> = { channel, data };
    if (options.msgId !== undefined) payload.msg_id = options.msgId;
    const ack = await this.call("publish", payload, options.timeoutMs ?? this.requestTimeout);
    return ack as unknown as PublishAck;
  }

  /** Call a backend method (`sb.rpc.<method>`); resolves with its answer's `data`. */
  async rpc<T = unknown>(
    method: string,
    data?: unknown,
    options: { timeoutMs?: number } = {},
  ): Promise<T> {
    const payload: Record<string, unknown> = { method, data: data ?? null };
    if (options.timeoutMs !== undefined) payload.timeout_ms = options.timeoutMs;
    const serverTimeout = options.timeoutMs ?? 5_000;
    const answer = await this.call("rpc", payload, serverTimeout + this.requestTimeout);
    return answer.data as T;
  }

  /** Users present in a channel (channels with presence on). */
  async presence(channel: string, options: { timeoutMs?: number } = {}): Promise<string[]> {
    const ack = await this.call("presence", { channel }, options.timeoutMs ?? this.requestTimeout);
    return Array.isArray(ack.users) ? (ack.users as string[]) : [];
  }

  /** Resolves once connected (at once if connected now). */
  ready(timeoutMs = this.options.connectTimeoutMs ?? 10_000): Promise<void> {
    return this.connectedLink(timeoutMs).then(() => undefined);
  }

  /** Close with 1000 and stop reconnecting. */
  close(): void {
    this.stop(1000, "closed by the client", "");
  }

  // -- requests --------------------------------------------------------------

  private get requestTimeout(): number {
    return this.options.requestTimeoutMs ?? 10_000;
  }

  private id(): string {
    return String(this.nextId++);
  }

  /** A request on the current connection, waiting for one (within the timeout) if none is up. */
  private async call(
    type: string,
    payload: Record<string, unknown>,
    timeoutMs: number,
  ): Promise<Record<string, unknown>> {
    const started = Date.now();
    const link = await this.connectedLink(timeoutMs);
    return link.request(this.id(), type, payload, Math.max(1, timeoutMs - (Date.now() - started)));
  }

  private connectedLink(timeoutMs: number): Promise<Link> {
    if (this.stopped) return Promise.reject(this.closedError());
    if (this.link && this.state === "connected") return Promise.resolve(this.link);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve: (link) => {
          clearTimeout(timer);
          resolve(link);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new SwitchboardError("no_answer", `not connected within ${timeoutMs} ms`, true));
      }, timeoutMs);
      this.waiters.add(waiter);
    });
  }

  private closedError(): SwitchboardError {
    const why = this.closedWith;
    return new SwitchboardError(
      "closed",
      why ? `client stopped (${why.code}${why.reason ? " " + why.reason : ""})` : "client stopped",
    );
  }

  // -- the connection loop ---------------------------------------------------

  private async run(): Promise<void> {
    let attempt = 0;
    while (!this.stopped) {
      if (!this.isOnline()) {
        this.setState("disconnected");
        await this.sleep(null);
        continue;
      }
      const url = await this.pickUrl();
      if (this.stopped) return;
      await this.probeOnce(url);
      if (this.stopped) return;
      this.setState("connecting");
      let outcome: Outcome;
      try {
        outcome = await this.attempt(url);
      } catch (err) {
        outcome = { code: 1006, reason: messageOf(err), established: false, link: null };
      }
      if (this.stopped) return;
      if (outcome.established && this.stable(outcome.link)) attempt = 0;
      this.countWebSocket(outcome);
      if (outcome.link?.restart) {
        // ended by the client to reconnect at once: other channels, another transport
        this.setState("disconnected");
        continue;
      }
      const advice = closeAdvice(outcome.code);
      if (advice === "stop") {
        this.stop(outcome.code, outcome.reason, url);
        return;
      }
      let delayMs: number;
      const drain = outcome.link?.reconnect;
      if (advice === "after_ms" && drain) {
        this.resumeToken = drain.resumeToken;
        delayMs = drain.afterMs;
      } else {
        // A resume token outlives refusals of the attempt to use it (a pod still
        // draining, full, over its rate): it is the client's place in every channel.
        // Only a session that ran and ended otherwise, or a refused token, drops it.
        if (outcome.established || advice === "new_token") this.resumeToken = null;
        if (advice === "new_token") this.token = null;
        // A refusal that names a delay (1013 `retry after <ms>`, a ticket's
        // Retry-After) is waited, jittered up; that URL is also parked that long.
        const hintMs = outcome.code === 1013 ? this.retryHint(outcome) : null;
        if (hintMs !== null) this.blockedUntil.set(url, Date.now() + hintMs);
        // A fresh token after 4001 goes out at once; a repeat backs off.
        if (advice === "new_token" && attempt === 0) delayMs = 0;
        // With other URLs, the next one is tried after the usual backoff instead
        // (this one stays parked for the hint).
        else if (hintMs !== null && this.urls.length === 1)
          delayMs = hintedDelay(hintMs, this.random, this.backoffCap);
        else delayMs = this.backoff(attempt);
        attempt += 1;
      }
      this.setState("disconnected");
      this.events.emit("disconnected", {
        code: outcome.code,
        reason: outcome.reason,
        willRetry: true,
        delayMs: Math.round(delayMs),
        url,
      });
      if (delayMs > 0) await this.sleep(delayMs);
    }
  }

  /** `probeWebSocket`, once before the first attempt: false goes to the fallback. */
  private async probeOnce(url: string): Promise<void> {
    if (this.probed) return;
    this.probed = true;
    const probe = this.options.probeWebSocket;
    if (!probe || (this.options.transport ?? "auto") !== "auto") return;
    let works = true;
    try {
      works = await probe(url);
    } catch {
      works = false;
    }
    if (!works) this.useTransport("sse");
  }

  /** WebSocket attempts failing in a row (no welcome, not refused) lead to the fallback. */
  private countWebSocket(outcome: Outcome): void {
    if ((this.options.transport ?? "auto") !== "auto" || !outcome.link) return;
    if (outcome.link.transport === "sse") {
      // a stream that never opened either: the edge is away, not WebSockets blocked
      if (!outcome.established && outcome.code === 1006) this.useTransport("websocket");
      return;
    }
    if (outcome.established || outcome.code !== 1006) {
      this.wsFailures = 0; // welcomed, or refused by an edge: WebSockets get through
      return;
    }
    this.wsFailures += 1;
    if (this.wsFailures >= (this.options.fallbackAfter ?? 2)) this.useTransport("sse");
  }

  private useTransport(transport: TransportKind): void {
    if (this.transport === transport) return;
    this.transport = transport;
    this.wsFailures = 0;
    this.events.emit("transport", transport);
  }

  /** On the fallback: a WebSocket now and then; once one is welcomed, move back to it. */
  private scheduleWebSocketRetry(link: Link): void {
    if ((this.options.transport ?? "auto") !== "auto" || this.wsRetryTimer !== null) return;
    this.wsRetryTimer = setTimeout(() => {
      this.wsRetryTimer = null;
      if (this.link !== link || !link.open) return;
      void this.tryWebSocket(link.url).then((works) => {
        if (this.link !== link || !link.open) return;
        if (!works) {
          this.scheduleWebSocketRetry(link);
          return;
        }
        this.useTransport("websocket");
        link.restart = true;
        link.end(CLIENT_ABORT, "WebSockets work again");
      });
    }, this.options.retryWebSocketMs ?? 30_000);
  }

  /** Whether a WebSocket to `url` is welcomed now (closed again at once). */
  private async tryWebSocket(url: string): Promise<boolean> {
    let token: string;
    try {
      token = await this.currentToken();
    } catch {
      return false;
    }
    let target = url;
    let protocols = [SUBPROTOCOL, "bearer." + token];
    if (this.options.tickets) {
      const ticket = await this.fetchTicket(url, token);
      if (typeof ticket !== "string") return false;
      target = withQuery(url, "ticket", ticket);
      protocols = [SUBPROTOCOL];
    }
    return new Promise((resolve) => {
      let ws: WebSocket;
      try {
        ws = new this.WS(target, protocols);
      } catch {
        resolve(false);
        return;
      }
      const timer = setTimeout(() => done(false), this.options.connectTimeoutMs ?? 10_000);
      const done = (works: boolean): void => {
        clearTimeout(timer);
        ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close(1000, "probe");
        } catch {
          // already closed
        }
        resolve(works);
      };
      ws.onmessage = (e: MessageEvent) =>
        done(typeof e.data === "string" && e.data.startsWith('{"type":"welcome"'));
      ws.onclose = () => done(false);
      ws.onerror = () => done(false);
    });
  }

  private backoff(attempt: number): number {
    return fullJitter(attempt, this.random, this.options.backoffBaseMs, this.backoffCap);
  }

  private get backoffCap(): number {
    return this.options.backoffCapMs ?? BACKOFF_CAP_MS;
  }

  /** The delay a refusal asked for (positive milliseconds), if it named one. */
  private retryHint(closure: Closure): number | null {
    const ms = closure.retryAfterMs ?? retryAfterMs(closure.reason);
    return ms !== null && ms > 0 ? ms : null;
  }

  /** The next URL in turn, skipping those whose 1013 asked for a pause (waits if all did). */
  private async pickUrl(): Promise<string> {
    for (;;) {
      const now = Date.now();
      for (let i = 0; i < this.urls.length; i++) {
        const url = this.urls[(this.nextUrl + i) % this.urls.length]!;
        if ((this.blockedUntil.get(url) ?? 0) <= now) {
          this.nextUrl = (this.nextUrl + i + 1) % this.urls.length;
          return url;
        }
      }
      const soonest = Math.min(...this.urls.map((u) => this.blockedUntil.get(u) ?? now));
      await this.sleep(Math.min(Math.max(soonest - now, 1), this.backoffCap));
      if (this.stopped) return this.urls[0]!;
      this.blockedUntil.clear();
    }
  }

  /** One connection attempt; resolves when that connection is over. */
  private async attempt(url: string): Promise<Outcome> {
    const resume = this.resumeToken;
    if (this.transport === "sse") return this.attemptWith(url, resume, null);
    let target = url;
    let protocols = [SUBPROTOCOL];
    if (resume) {
      target = withQuery(url, "resume", resume);
    } else {
      let token: string;
      try {
        token = await this.currentToken();
      } catch (err) {
        const error = new SwitchboardError("unauthorized", `getToken failed: ${messageOf(err)}`, true);
        this.events.emit("error", error);
        return { code: 1006, reason: error.message, established: false, link: null };
      }
      if (this.options.tickets) {
        const ticket = await this.fetchTicket(url, token);
        if (typeof ticket !== "string") return { ...ticket, established: false, link: null };
        target = withQuery(url, "ticket", ticket);
      } else {
        protocols = [SUBPROTOCOL, "bearer." + token];
      }
    }
    if (this.stopped) {
      return { code: 1000, reason: "closed by the client", established: false, link: null };
    }
    return this.attemptWith(url, resume, () => new this.WS(target, protocols));
  }

  /** One connection: a WebSocket (`open` makes it), else an SSE stream. */
  private async attemptWith(
    url: string,
    resume: string | null,
    open: (() => WebSocket) | null,
  ): Promise<Outcome> {
    let welcome: Record<string, unknown> | null = null;
    let welcomed!: (payload: Record<string, unknown>) => void;
    const gotWelcome = new Promise<Record<string, unknown>>((resolve) => (welcomed = resolve));
    // Frames after the welcome wait until the client has set up for this connection
    // (the edge's resume acks can share the welcome's frame).
    let backlog: Frame[] | null = [];
    const onFrames = (l: Link, frames: Frame[]): void => {
      if (frames.length === 0 && this.link === l) this.liveness?.touch(); // an SSE comment
      for (const frame of frames) {
        if (!welcome) {
          if (frame.type === "welcome") {
            welcome = frame.payload;
            welcomed(frame.payload);
          }
          continue; // nothing comes before the welcome
        }
        if (backlog) backlog.push(frame);
        else this.onFrame(l, frame);
      }
    };
    let link: Link;
    if (open) {
      link = new WsLink(open(), url, onFrames);
    } else {
      if (!this.fetchFn) {
        return { code: 1006, reason: "the fallback needs fetch()", established: false, link: null };
      }
      const sse = new SseLink({
        url,
        channels: [...this.entries.keys()],
        positions: this.positions.all(),
        resume,
        token: () => this.currentToken(),
        fetch: this.fetchFn,
        onFrames,
      });
      link = sse;
      void sse.start().catch((err: unknown) => sse.end(1006, messageOf(err)));
    }
    this.link = link;
    const timeoutMs = this.options.connectTimeoutMs ?? 10_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), timeoutMs);
    });
    const first = await Promise.race([gotWelcome, link.closed.then(() => null), timedOut]);
    clearTimeout(timer);
    if (!first) {
      link.end(CLIENT_ABORT, `no welcome within ${timeoutMs} ms`);
      const closure = await link.closed;
      if (this.link === link) this.link = null;
      return { ...closure, established: false, link };
    }
    this.stats.connects += 1;
    if (resume) this.stats.resumes += 1;
    this.resumeToken = null; // used: this connection's own `reconnect` brings the next
    this.setState("connected");
    this.watchLiveness(link, Number(first.ping_interval_s) || 30);
    this.scheduleRefresh(link, first.expires_at);
    this.takeSubscriptions(link, resume);
    if (link instanceof SseLink) this.scheduleWebSocketRetry(link);
    const queued = backlog;
    backlog = null;
    for (const frame of queued) this.onFrame(link, frame);
    for (const waiter of [...this.waiters]) waiter.resolve(link);
    this.waiters.clear();
    this.events.emit("connected", {
      url,
      transport: link.transport,
      node: String(first.node ?? ""),
      session: String(first.session ?? ""),
      user: String(first.user ?? ""),
      resumed: resume !== null,
      reconnects: this.stats.connects - 1,
    });
    const closure = await link.closed;
    this.clearTimers();
    if (this.link === link) this.link = null;
    this.lostAt = Date.now();
    for (const entry of this.entries.values()) entry.link = null;
    return { ...closure, established: true, link };
  }

  /** Whether a connection got all its subscriptions back (its end then starts backoff over). */
  private stable(link: Link | null): boolean {
    if (link === null) return false;
    for (const entry of this.entries.values()) if (entry.ackedOn !== link) return false;
    return true;
  }

  private async currentToken(): Promise<string> {
    const token = this.token;
    if (token) {
      const exp = expiresAtMs(token);
      if (exp === null || exp - Date.now() > TOKEN_SLACK_MS) return token;
    }
    const fresh = await this.options.getToken();
    if (typeof fresh !== "string" || !fresh) throw new Error("getToken() returned no token");
    this.token = fresh;
    return fresh;
  }

  /** `POST /v1/tickets` on the edge the attempt is for: a ticket, or why not. */
  private async fetchTicket(url: string, token: string): Promise<string | Closure> {
    if (!this.fetchFn) return { code: 1006, reason: "tickets need fetch()" };
    const endpoint = url.replace(/^ws/, "http").replace(/\/v1\/ws(\?.*)?$/, "/v1/tickets");
    let response: Response;
    try {
      response = await this.fetchFn(endpoint, {
        method: "POST",
        headers: { Authorization: "Bearer " + token },
      });
    } catch (err) {
      return { code: 1006, reason: `ticket request failed: ${messageOf(err)}` };
    }
    const body = await response.text().catch(() => "");
    if (response.status === 201) {
      try {
        const ticket = (JSON.parse(body) as { ticket?: unknown }).ticket;
        if (typeof ticket === "string") return ticket;
      } catch {
        // fall through
      }
      return { code: 1006, reason: "ticket answer without a ticket" };
    }
    const reason = `ticket refused: ${response.status} ${body.trim()}`;
    if (response.status === 401) return { code: 4001, reason };
    if (response.status === 403) return { code: 1008, reason }; // Origin refused: retry, slowly
    const retry = Number(response.headers.get("Retry-After"));
    return Number.isInteger(retry) && retry > 0
      ? { code: 1013, reason, retryAfterMs: retry * 1000 }
      : { code: 1013, reason };
  }

  private stop(code: number, reason: string, url: string): void {
    if (this.stopped) return;
    this.stopped = true;
    this.closedWith = { code, reason };
    this.unwatch();
    this.clearTimers();
    const link = this.link;
    this.link = null;
    link?.end(code === 1000 ? 1000 : CLIENT_ABORT, reason);
    const error = this.closedError();
    for (const waiter of [...this.waiters]) waiter.reject(error);
    this.waiters.clear();
    for (const entry of this.entries.values()) entry.rejectReady(error);
    this.wake?.();
    this.setState("closed");
    url = url || (link?.url ?? "");
    this.events.emit("disconnected", { code, reason, willRetry: false, delayMs: 0, url });
  }

  private setState(state: State): void {
    if (this.state === state) return;
    this.state = state;
    this.events.emit("state", state);
  }

  /** Wait `ms` (or until woken: `online`, `close()`); null waits only for a wake-up. */
  private sleep(ms: number | null): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === null ? undefined : setTimeout(done, ms);
      const self = this;
      function done(): void {
        clearTimeout(timer);
        if (self.wake === done) self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }

  // -- the browser's network state ------------------------------------------

  private isOnline(): boolean {
    if (this.options.watchNetwork === false) return true;
    const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    return nav?.onLine !== false;
  }

  private watchNetwork(): () => void {
    const target = globalThis as unknown as {
      addEventListener?: (type: string, fn: () => void) => void;
      removeEventListener?: (type: string, fn: () => void) => void;
      window?: unknown;
    };
    if (this.options.watchNetwork === false || !target.window || !target.addEventListener) {
      return () => undefined;
    }
    const offline = (): void => this.link?.end(CLIENT_ABORT, "the browser went offline");
    const online = (): void => this.wake?.(); // try now, not after the backoff
    target.addEventListener("offline", offline);
    target.addEventListener("online", online);
    return () => {
      target.removeEventListener?.("offline", offline);
      target.removeEventListener?.("online", online);
    };
  }

  private clearTimers(): void {
    if (this.wsRetryTimer !== null) clearTimeout(this.wsRetryTimer);
    this.wsRetryTimer = null;
    this.liveness?.stop();
    this.liveness = null;
    if (this.refreshTimer !== null) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
  }

  /** Probes after silences of `ping_interval_s`; gives the connection up when unanswered. */
  private watchLiveness(link: Link, pingIntervalS: number): void {
    this.liveness = new Liveness(
      pingIntervalS * 1000,
      this.options.probeTimeoutMs ?? 10_000,
      () => {
        this.stats.probes += 1;
        link.send({ type: "unsubscribe", id: "probe", payload: { channel: PROBE_CHANNEL } });
      },
      (silentMs) => {
        link.end(CLIENT_ABORT, `no answer from the edge for ${Math.round(silentMs / 1000)} s`);
      },
    );
  }

  // -- token refresh -----------------------------------------------------------

  private scheduleRefresh(link: Link, expiresAt: unknown): void {
    if (this.refreshTimer !== null) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (this.options.refresh === false || typeof expiresAt !== "number") return;
    const left = expiresAt * 1000 - Date.now();
    const margin = Math.min(this.options.refreshMarginMs ?? 30_000, left / 2);
    this.refreshTimer = setTimeout(() => void this.refresh(link), Math.max(0, left - margin));
  }

  private async refresh(link: Link): Promise<void> {
    this.refreshTimer = null;
    if (this.link !== link || !link.open) return;
    let token: string;
    try {
      token = await this.options.getToken();
    } catch (err) {
      const message = `getToken failed: ${messageOf(err)}`;
      this.events.emit("error", new SwitchboardError("unauthorized", message, true));
      return; // at `exp` the edge closes with 4001 and the client asks again
    }
    this.token = token;
    try {
      const ack = await link.request(this.id(), "refresh", { token }, this.requestTimeout);
      this.scheduleRefresh(link, ack.expires_at);
    } catch (err) {
      const error = err as SwitchboardError;
      if (error.code !== "disconnected") this.events.emit("error", error);
    }
  }

  // -- subscriptions -------------------------------------------------------------

  private newEntry(channel: string): Entry {
    let resolveReady!: (ack: Subscribed) => void;
    let rejectReady!: (error: SwitchboardError) => void;
    const ready = new Promise<Subscribed>((resolve, reject) => {
      resolveReady = resolve;
      rejectReady = reject;
    });
    ready.catch(() => undefined); // observed by whoever awaits it
    return {
      channel,
      handlers: new Set(),
      ready,
      resolveReady,
      rejectReady,
      acked: false,
      ackedOn: null,
      link: null,
    };
  }

  /** After a welcome: the edge restores what the resume token lists; the rest is asked for. */
  private takeSubscriptions(link: Link, resume: string | null): void {
    const restored = resume ? resumedChannels(resume) : new Set<string>();
    // a stream is opened with its channels: the edge subscribes them, acks `resume:<channel>`
    const streamed = link instanceof SseLink ? new Set(link.channels) : new Set<string>();
    for (const channel of streamed) restored.add(channel);
    for (const channel of restored) {
      const entry = this.entries.get(channel);
      const answer = link.expect(`resume:${channel}`, this.requestTimeout);
      const again = !streamed.has(channel) || (entry?.acked ?? false);
      if (entry) this.follow(link, entry, answer, again);
      else answer.then(() => this.unsubscribeOn(link, channel), () => undefined);
    }
    for (const entry of this.entries.values()) {
      if (!restored.has(entry.channel)) this.subscribeOn(link, entry, entry.acked);
    }
  }

  private subscribeOn(link: Link, entry: Entry, again: boolean): void {
    const payload: Record<string, unknown> = { channel: entry.channel };
    const since = this.positions.get(entry.channel);
    if (since) payload.since = { offset: since.offset, epoch: since.epoch };
    const answer = link.request(this.id(), "subscribe", payload, this.requestTimeout);
    this.follow(link, entry, answer, again, since !== undefined);
  }

  /** Act on a (re)subscription's answer. */
  private follow(
    link: Link,
    entry: Entry,
    answer: Promise<Record<string, unknown>>,
    again: boolean,
    hadSince = this.positions.get(entry.channel) !== undefined,
  ): void {
    entry.link = link;
    answer.then(
      (ack) => {
        if (this.entries.get(entry.channel) !== entry) {
          this.unsubscribeOn(link, entry.channel); // given up while it was being taken
          return;
        }
        if (entry.link !== link) return;
        const offset = typeof ack.offset === "number" ? ack.offset : null;
        const epoch = typeof ack.epoch === "string" ? ack.epoch : null;
        const recovered = ack.recovered === true;
        if (hadSince && !recovered) {
          this.positions.reset(entry.channel, offset, epoch);
          this.gap(entry, { channel: entry.channel, reason: "history" });
        } else if (!hadSince) {
          this.positions.start(entry.channel, offset, epoch);
          if (again && offset === null) {
            const { channel } = entry;
            this.gap(entry, { channel, reason: "reconnect", sinceTs: this.lostAt, untilTs: Date.now() });
          }
        }
        const info: Subscribed = {
          channel: entry.channel,
          offset,
          epoch,
          recovered,
          resubscribed: again,
        };
        entry.acked = true;
        entry.ackedOn = link;
        entry.resolveReady(info);
        for (const handlers of [...entry.handlers]) handlers.subscribed?.(info);
      },
      (error: SwitchboardError) => {
        if (entry.link !== link || this.entries.get(entry.channel) !== entry) return;
        if (error.code === "disconnected") return; // the next connection subscribes again
        if (error.retryable) {
          // A subscription that cannot be taken now fails the connection: back off, retry.
          link.end(CLIENT_ABORT, `subscribe '${entry.channel}' failed: ${error.code}`);
          return;
        }
        this.entries.delete(entry.channel);
        this.positions.forget(entry.channel);
        entry.rejectReady(error);
        for (const handlers of [...entry.handlers]) handlers.error?.(error);
      },
    );
  }

  private unsubscribeOn(link: Link, channel: string): void {
    link.send({ type: "unsubscribe", id: this.id(), payload: { channel } });
  }

  private gap(entry: Entry | undefined, gap: Gap): void {
    this.events.emit("gap", gap);
    for (const handlers of [...(entry?.handlers ?? [])]) handlers.gap?.(gap);
  }

  // -- frames --------------------------------------------------------------------

  private onFrame(link: Link, frame: Frame): void {
    if (this.link !== link) return;
    this.liveness?.touch();
    const p = frame.payload;
    switch (frame.type) {
      case "event":
        this.onEvent(p);
        return;
      case "ack":
      case "rpc_response":
        if (frame.id !== undefined) link.answer(frame.id, p);
        return;
      case "error": {
        const error = new SwitchboardError(
          String(p.code ?? "internal"),
          String(p.message ?? ""),
          p.retryable === true,
        );
        if (frame.id === "probe") return;
        const waited = frame.id !== undefined && link.answer(frame.id, null, error);
        if (!waited) this.events.emit("error", error);
        return;
      }
      case "gap": {
        const channel = String(p.channel ?? "");
        this.gap(this.entries.get(channel), {
          channel,
          reason: "backbone",
          sinceTs: Number(p.since_ts),
          untilTs: Number(p.until_ts),
        });
        return;
      }
      case "join":
      case "leave": {
        const change: PresenceChange = { channel: String(p.channel ?? ""), user: String(p.user ?? "") };
        this.events.emit(frame.type, change);
        const entry = this.entries.get(change.channel);
        for (const handlers of [...(entry?.handlers ?? [])]) handlers[frame.type]?.(change);
        return;
      }
      case "reconnect":
        link.reconnect = {
          afterMs: Math.max(0, Number(p.after_ms) || 0),
          resumeToken: typeof p.resume_token === "string" ? p.resume_token : null,
        };
        return;
      default:
        return; // newer server messages are ignored
    }
  }

  private onEvent(p: Record<string, unknown>): void {
    const channel = String(p.channel ?? "");
    const event: ChannelEvent = { channel, data: p.data, ts: Number(p.ts) };
    if (typeof p.from === "string") event.from = p.from;
    if (typeof p.offset === "number") event.offset = p.offset;
    if (typeof p.epoch === "string") event.epoch = p.epoch;
    if (channel.startsWith("#")) {
      this.events.emit("message", event);
      return;
    }
    const entry = this.entries.get(channel);
    if (!entry) return;
    if (this.positions.seen(channel, p.offset, p.epoch)) {
      this.stats.duplicatesDropped += 1;
      return;
    }
    for (const handlers of [...entry.handlers]) handlers.event?.(event);
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function withQuery(url: string, key: string, value: string): string {
  return url + (url.includes("?") ? "&" : "?") + key + "=" + encodeURIComponent(value);
}

/** Connect to Switchboard edges; the client reconnects by itself until `close()`. */
export function connect(options: ConnectOptions): Client {
  return new Client(options);
}
