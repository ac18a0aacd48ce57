/**
 * The fallback transport for networks that block WebSockets (docs/protocol.md §12):
 * `GET /v1/sse` for what the edge sends, `POST /v1/messages` for each request.
 *
 * The stream is read with `fetch` rather than `EventSource`: a refusal's HTTP status
 * and JSON body can be read (EventSource only reports "error"), `Authorization` and
 * `Last-Event-ID` can be set, and EventSource's own reconnects (with a spent ticket,
 * without the SDK's positions) never happen. Its events are the WebSocket's frames,
 * so the client treats both transports alike.
 */

import { SwitchboardError } from "./errors.js";
import type { Frame } from "./frames.js";
import { CLIENT_ABORT, Link, type Closure } from "./link.js";
import type { Position } from "./positions.js";

/** `ws(s)://host/v1/ws?x` → `http(s)://host/v1/<path>` (query dropped). */
export function httpUrl(wsUrl: string, path: string): string {
  const base = wsUrl.replace(/^ws/, "http").replace(/\?.*$/, "");
  return base.replace(/\/v1\/ws$/, "") + path;
}

/** The `Last-Event-ID` an edge reads as these positions (docs/protocol.md §12.1). */
export function eventId(positions: Map<string, Position>): string | null {
  if (positions.size === 0) return null;
  const doc: Record<string, [number, string]> = {};
  for (const [channel, p] of [...positions].sort(([a], [b]) => (a < b ? -1 : 1))) {
    doc[channel] = [p.offset, p.epoch];
  }
  const json = new TextEncoder().encode(JSON.stringify(doc));
  let binary = "";
  for (const byte of json) binary += String.fromCharCode(byte);
  return "1." + btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** A refused stream's HTTP status as the close code a refused WebSocket would show. */
export function refusalClosure(status: number, body: string, retryAfter: string | null): Closure {
  let message = body.trim();
  try {
    const frame = JSON.parse(body) as { payload?: { message?: unknown } };
    if (typeof frame.payload?.message === "string") message = frame.payload.message;
  } catch {
    // not JSON: the text itself
  }
  if (status === 401) return { code: 4001, reason: message };
  if (status === 403) return { code: 4003, reason: message };
  if (status === 429 || status === 503) {
    const seconds = Number(retryAfter) || 1;
    return { code: 1013, reason: `retry after ${seconds * 1000}` };
  }
  return { code: 1008, reason: `${status} ${message}`.trim() };
}

export interface SseOptions {
  url: string; // the edge's WebSocket URL, which names the edge
  channels: string[];
  positions: Map<string, Position>;
  resume: string | null;
  token: () => Promise<string>;
  fetch: typeof fetch;
  onFrames: (link: Link, frames: Frame[]) => void;
}

/** One SSE stream to an edge, and the POSTs of requests while it is up. */
export class SseLink extends Link {
  readonly transport = "sse";
  readonly channels: string[];
  private readonly abort = new AbortController();
  private restartTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly options: SseOptions) {
    super(options.url);
    this.channels = options.channels;
  }

  /** Open the stream (credentials first: the token, or the resume token). */
  async start(): Promise<void> {
    const { options } = this;
    const query = options.channels.map((c) => "channel=" + encodeURIComponent(c));
    const headers: Record<string, string> = {};
    if (options.resume) {
      query.push("resume=" + encodeURIComponent(options.resume));
    } else {
      headers.Authorization = "Bearer " + (await options.token());
    }
    const last = eventId(options.positions);
    if (last) headers["Last-Event-ID"] = last;
    const url = httpUrl(options.url, "/v1/sse") + (query.length ? "?" + query.join("&") : "");
    let response: Response;
    try {
      response = await options.fetch(url, { headers, signal: this.abort.signal, cache: "no-store" });
    } catch (err) {
      this.finish({ code: 1006, reason: `stream failed: ${messageOf(err)}` });
      return;
    }
    if (response.status !== 200 || !response.body) {
      const body = await response.text().catch(() => "");
      this.finish(refusalClosure(response.status, body, response.headers.get("Retry-After")));
      return;
    }
    await this.read(response.body);
  }

  private async read(body: ReadableStream<Uint8Array>): Promise<void> {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let kind = "message";
    let data: string[] = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline: number;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).replace(/\r$/, "");
          buffer = buffer.slice(newline + 1);
          if (line === "") {
            if (data.length) this.dispatch(kind, data.join("\n"));
            kind = "message";
            data = [];
          } else if (line.startsWith(":")) {
            this.options.onFrames(this, []); // a comment: the stream is alive
          } else {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") kind = value;
            else if (field === "data") data.push(value);
          }
          if (this.ended) return;
        }
      }
      this.finish({ code: 1006, reason: "the stream ended" });
    } catch (err) {
      this.finish({ code: 1006, reason: `stream failed: ${messageOf(err)}` });
    }
  }

  private dispatch(kind: string, data: string): void {
    let frame: Frame;
    try {
      frame = JSON.parse(data) as Frame;
    } catch {
      return;
    }
    if (kind === "close") {
      const p = frame.payload ?? {};
      this.finish({ code: Number(p.code) || 1006, reason: String(p.reason ?? "") });
      return;
    }
    this.options.onFrames(this, [frame]);
  }

  /** No frames go up a stream: requests are POSTs (`request`). */
  send(): boolean {
    return false;
  }

  override request(
    id: string,
    type: string,
    payload: Record<string, unknown>,
    timeoutMs: number,
  ): Promise<Record<string, unknown>> {
    if (type === "subscribe" || type === "unsubscribe") {
      // A stream's channels are fixed: open another one with the new set (positions
      // go with it, nothing is missed); the next connection answers the subscription.
      this.restartSoon();
      return Promise.reject(new SwitchboardError("disconnected", "the stream reopens", true));
    }
    return this.post(id, type, payload, timeoutMs);
  }

  private async post(
    id: string,
    type: string,
    payload: Record<string, unknown>,
    timeoutMs: number,
  ): Promise<Record<string, unknown>> {
    if (this.ended) throw new SwitchboardError("disconnected", "not connected", true);
    const token = await this.options.token();
    let response: Response;
    try {
      response = await this.options.fetch(httpUrl(this.url, "/v1/messages"), {
        method: "POST",
        headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
        body: JSON.stringify({ type, id, payload }),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      const timedOut = err instanceof DOMException && err.name === "TimeoutError";
      if (timedOut) throw new SwitchboardError("no_answer", `no answer within ${timeoutMs} ms`, true);
      throw new SwitchboardError("disconnected", `request failed: ${messageOf(err)}`, true);
    }
    const text = await response.text();
    let frame: Frame;
    try {
      frame = JSON.parse(text) as Frame;
    } catch {
      throw new SwitchboardError("internal", `HTTP ${response.status}: ${text.slice(0, 200)}`, true);
    }
    const p = frame.payload ?? {};
    if (frame.type === "error") {
      throw new SwitchboardError(String(p.code ?? "internal"), String(p.message ?? ""), p.retryable === true);
    }
    return p;
  }

  /** End this stream soon so that the client opens another (requests in this tick batch). */
  restartSoon(): void {
    if (this.ended || this.restartTimer !== null) return;
    this.restart = true;
    this.restartTimer = setTimeout(() => this.end(CLIENT_ABORT, "reopening the stream"), 0);
  }

  end(code: number, reason: string): void {
    if (this.ended) return;
    this.finish({ code, reason });
  }

  protected override finish(closure: Closure): void {
    if (this.ended) return;
    if (this.restartTimer !== null) clearTimeout(this.restartTimer);
    this.abort.abort();
    super.finish(closure);
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
