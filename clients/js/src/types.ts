/** The shapes the client hands to applications. */

import type { SwitchboardError } from "./errors.js";

export type State = "connecting" | "connected" | "disconnected" | "closed";

/** A WebSocket constructor: the browser's, or another with the same API. */
export type WebSocketLike = new (url: string, protocols?: string | string[]) => WebSocket;

export interface ConnectOptions {
  /** Edge URLs (`wss://host/v1/ws`), tried in turn: each new attempt takes the next one. */
  urls: string | string[];
  /** A fresh JWT from your backend. Called at start, after 4001, and before `expires_at`. */
  getToken: () => string | Promise<string>;
  /** Connect with `?ticket=` from `POST /v1/tickets` instead of the token in the subprotocol. */
  tickets?: boolean;
  /** Refresh the token in-band before it expires (default true). */
  refresh?: boolean;
  /** Refresh this long before `expires_at` (default 30 s; at most half the time left). */
  refreshMarginMs?: number;
  /** Give up on an attempt that has no `welcome` after this long (default 10 s). */
  connectTimeoutMs?: number;
  /** Requests without an answer after this long reject with `no_answer` (default 10 s). */
  requestTimeoutMs?: number;
  /** After `ping_interval_s` without a frame the client asks the edge for an answer;
   * none within this long means the connection is dead (default 10 s). */
  probeTimeoutMs?: number;
  /** Reconnect backoff: full jitter from `backoffBaseMs` (500) doubling to `backoffCapMs` (20 000);
   * after a refusal naming a delay (1013 `retry after <ms>`), that delay × U(1, 1.5), capped too. */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** Follow the browser's `online` / `offline` events (default true where they exist). */
  watchNetwork?: boolean;
  /** `auto` (default): WebSocket, falling back to SSE + POST (docs/protocol.md §12) after
   * `fallbackAfter` WebSocket attempts failed in a row, or when `probeWebSocket` says
   * no; `websocket` or `sse` use only that one. */
  transport?: "auto" | "websocket" | "sse";
  /** WebSocket attempts that fail in a row (no `welcome`, not refused) before the
   * fallback (default 2). */
  fallbackAfter?: number;
  /** Asked before the first attempt: false goes to the fallback at once. */
  probeWebSocket?: (url: string) => boolean | Promise<boolean>;
  /** On the fallback, try a WebSocket in the background this often, and switch back
   * when one is welcomed (default 30 000). */
  retryWebSocketMs?: number;
  /** Defaults to the global `WebSocket`. */
  WebSocket?: WebSocketLike;
  /** Defaults to the global `fetch` (used for tickets and the fallback). */
  fetch?: typeof fetch;
  /** Defaults to `Math.random` (backoff jitter). */
  random?: () => number;
}

export interface Connected {
  url: string;
  /** `websocket`, or `sse` on the fallback (an SSE stream and POSTs). */
  transport: "websocket" | "sse";
  node: string;
  session: string;
  user: string;
  /** Came back with a drain's resume token: the edge restored the subscriptions. */
  resumed: boolean;
  /** Connections made before this one. */
  reconnects: number;
}

export interface Disconnected {
  /** The close code (1006: dropped; 4000: given up by the client, see `reason`). */
  code: number;
  reason: string;
  /** False when the client stopped for good (1000/1003/1007/1009/4003, or `close()`). */
  willRetry: boolean;
  /** Milliseconds until the next attempt, when `willRetry`. */
  delayMs: number;
  url: string;
}

/** Events may be missing for a channel. `backbone`: the edge lost NATS between
 * `sinceTs` and `untilTs`; `history`: a resubscription could not recover what was
 * missed (it no longer is stored); `reconnect`: a channel without history was
 * resubscribed after a reconnect. Reload state from your backend. */
export interface Gap {
  channel: string;
  reason: "backbone" | "history" | "reconnect";
  sinceTs?: number;
  untilTs?: number;
}

export interface ChannelEvent<T = unknown> {
  channel: string;
  data: T;
  ts: number;
  /** Publisher's user id, when the edge exposes it. */
  from?: string;
  /** Position in the channel's history (channels with history only). */
  offset?: number;
  epoch?: string;
}

export interface PresenceChange {
  channel: string;
  user: string;
}

export interface Subscribed {
  channel: string;
  /** Newest offset of the channel's history, or null without history. */
  offset: number | null;
  epoch: string | null;
  /** A resubscription got everything it missed. */
  recovered: boolean;
  /** This ack follows a reconnect (not the first subscription). */
  resubscribed: boolean;
}

export interface SubscriptionHandlers<T = unknown> {
  event?: (event: ChannelEvent<T>) => void;
  subscribed?: (ack: Subscribed) => void;
  gap?: (gap: Gap) => void;
  join?: (change: PresenceChange) => void;
  leave?: (change: PresenceChange) => void;
  /** The edge refused the subscription for good (e.g. `forbidden`); it is dropped. */
  error?: (error: SwitchboardError) => void;
}

export interface Subscription {
  readonly channel: string;
  /** Resolves at the first ack; rejects if the edge refuses the subscription. */
  readonly ready: Promise<Subscribed>;
  unsubscribe(): void;
}

export interface PublishAck {
  channel: string;
  offset?: number;
  epoch?: string;
}

export interface ClientEvents {
  state: State;
  connected: Connected;
  disconnected: Disconnected;
  gap: Gap;
  join: PresenceChange;
  leave: PresenceChange;
  /** Messages sent to this user (`channel` is `#<user id>`). */
  message: ChannelEvent;
  /** The transport changed: to the fallback (`sse`), or back to `websocket`. */
  transport: "websocket" | "sse";
  /** Errors that belong to no request: a refused refresh, getToken failures, bad frames. */
  error: SwitchboardError;
}

export interface Stats {
  /** Connections made (welcomed). */
  connects: number;
  /** Of which with a resume token. */
  resumes: number;
  /** Events dropped because they had been delivered already (replays after reconnects). */
  duplicatesDropped: number;
  /** Probes sent after silences of `ping_interval_s`. */
  probes: number;
}
