/**
 * One connection to an edge: frames in, requests out, and one `closed` Promise that
 * settles exactly once, whether the edge closed, the network dropped, or the client
 * gave the connection up (a dead connection never sends a close). `WsLink` is a
 * WebSocket; `SseLink` (sse.ts) the fallback, an SSE stream plus POSTs.
 */

import { SwitchboardError } from "./errors.js";
import { splitFrame, type Frame } from "./frames.js";

export const SUBPROTOCOL = "switchboard.v1";
/** How long an `error` event waits for its `close` before the link ends as 1006. */
const ERROR_GRACE_MS = 500;
/** Close code the client uses when it gives a connection up itself. */
export const CLIENT_ABORT = 4000;

export interface Closure {
  code: number;
  reason: string;
  /** The edge's delay for the next attempt, when its reason cannot say it (a ticket's 503). */
  retryAfterMs?: number;
}

interface Pending {
  resolve: (payload: Record<string, unknown>) => void;
  reject: (error: SwitchboardError) => void;
  timer: ReturnType<typeof setTimeout>;
}

export type TransportKind = "websocket" | "sse";

export abstract class Link {
  readonly closed: Promise<Closure>;
  abstract readonly transport: TransportKind;
  /** From the edge's `reconnect` frame, which comes just before a drain's 1001. */
  reconnect: { afterMs: number; resumeToken: string | null } | null = null;
  /** Ended by the client to connect again at once (another transport, other channels). */
  restart = false;
  private settle!: (closure: Closure) => void;
  protected ended = false;
  private readonly pending = new Map<string, Pending>();

  constructor(readonly url: string) {
    this.closed = new Promise((resolve) => (this.settle = resolve));
  }

  get open(): boolean {
    return !this.ended;
  }

  abstract send(message: Record<string, unknown>): boolean;

  /** Give the connection up now: close it (politely, if it can) and settle `closed`. */
  abstract end(code: number, reason: string): void;

  /** Send a request and wait for the answer that echoes its id. */
  request(
    id: string,
    type: string,
    payload: Record<string, unknown>,
    timeoutMs: number,
  ): Promise<Record<string, unknown>> {
    const answer = this.expect(id, timeoutMs);
    if (!this.send({ type, id, payload })) {
      this.answer(id, null, new SwitchboardError("disconnected", "not connected", true));
    }
    return answer;
  }

  /** Wait for an answer with `id` that the edge sends on its own (resume acks). */
  expect(id: string, timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      if (this.ended) {
        reject(new SwitchboardError("disconnected", "the connection is closed", true));
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SwitchboardError("no_answer", `no answer within ${timeoutMs} ms`, true));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
    });
  }

  /** Settle the request `id`: with an ack payload, or with an error. True if one waited. */
  answer(id: string, payload: Record<string, unknown> | null, error?: SwitchboardError): boolean {
    const waiting = this.pending.get(id);
    if (!waiting) return false;
    this.pending.delete(id);
    clearTimeout(waiting.timer);
    if (error) waiting.reject(error);
    else waiting.resolve(payload ?? {});
    return true;
  }

  protected finish(closure: Closure): void {
    if (this.ended) return;
    this.ended = true;
    const why = `${closure.code}${closure.reason ? " " + closure.reason : ""}`;
    const error = new SwitchboardError("disconnected", `closed (${why}) before the answer`, true);
    for (const [id, waiting] of [...this.pending]) {
      this.pending.delete(id);
      clearTimeout(waiting.timer);
      waiting.reject(error);
    }
    this.settle(closure);
  }
}

/** A WebSocket to an edge. */
export class WsLink extends Link {
  readonly transport = "websocket";

  constructor(
    readonly ws: WebSocket,
    url: string,
    private readonly onFrames: (link: Link, frames: Frame[]) => void,
  ) {
    super(url);
    ws.onmessage = (e: MessageEvent) => {
      if (this.ended) return;
      if (typeof e.data === "string") this.onFrames(this, splitFrame(e.data));
    };
    ws.onclose = (e: CloseEvent) => this.finish({ code: e.code || 1006, reason: e.reason || "" });
    ws.onerror = () => {
      // Browsers follow an error with a close event, which carries the code; some
      // runtimes (Node 20's WebSocket after a refused connection) never do.
      setTimeout(() => this.finish({ code: 1006, reason: "connection failed" }), ERROR_GRACE_MS);
    };
  }

  send(message: Record<string, unknown>): boolean {
    if (this.ended || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Give the connection up now: close it (politely, if it can) and settle `closed`. */
  end(code: number, reason: string): void {
    if (this.ended) return;
    try {
      this.ws.close(code === 1000 ? 1000 : CLIENT_ABORT, reason.slice(0, 120));
    } catch {
      // already closing
    }
    this.finish({ code, reason });
  }

  protected override finish(closure: Closure): void {
    if (this.ended) return;
    this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
    super.finish(closure);
  }
}
