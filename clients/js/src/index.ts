/** Switchboard's browser client. See docs/browser.md. */

export { Client, connect } from "./client.js";
export { SwitchboardError, type ErrorCode } from "./errors.js";
export { closeAdvice, retryAfterMs, type Advice } from "./codes.js";
export { fullJitter, hintedDelay, BACKOFF_BASE_MS, BACKOFF_CAP_MS } from "./backoff.js";
export { splitFrame, type Frame } from "./frames.js";
export { Positions, type Position } from "./positions.js";
export { CLIENT_ABORT } from "./link.js";
export type * from "./types.js";
