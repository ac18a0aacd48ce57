/** The typed error every Promise of the client rejects with. */

/**
 * Stable codes: the edge's (`forbidden`, `unauthorized`, `rate_limited`,
 * `limit_exceeded`, `not_enabled`, `bad_request`, `unknown_type`, `not_found`,
 * `timeout`, `too_large`, `unavailable`, `internal`, or an RPC backend's own), and
 * the client's: `disconnected` (the connection dropped before the answer: the
 * request may or may not have been carried out), `no_answer` (no answer in time),
 * `closed` (the client stopped: `close()` or a do-not-reconnect close code).
 */
export type ErrorCode =
  | "forbidden"
  | "unauthorized"
  | "rate_limited"
  | "limit_exceeded"
  | "not_enabled"
  | "bad_request"
  | "unknown_type"
  | "not_found"
  | "timeout"
  | "too_large"
  | "unavailable"
  | "internal"
  | "disconnected"
  | "no_answer"
  | "closed"
  | (string & {});

export class SwitchboardError extends Error {
  readonly code: ErrorCode;
  /** Sending the same request again later may succeed. */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, retryable = false) {
    super(message);
    this.name = "SwitchboardError";
    this.code = code;
    this.retryable = retryable;
  }
}
