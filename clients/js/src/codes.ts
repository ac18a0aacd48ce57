/**
 * The close-code table (docs/protocol.md §10): what the client does after each close.
 * Codes not listed (1006: the connection dropped) mean "back off and reconnect".
 */

export type Advice = "stop" | "after_ms" | "backoff" | "new_token";

const ADVICE: Record<number, Advice> = {
  1000: "stop",
  1001: "after_ms",
  1003: "stop",
  1007: "stop",
  1008: "backoff",
  1009: "stop",
  1011: "backoff",
  1013: "backoff",
  4001: "new_token",
  4003: "stop",
};

/** What to do after a close with `code`. */
export function closeAdvice(code: number): Advice {
  return ADVICE[code] ?? "backoff";
}

/** The delay a `1013` close asks for (`retry after <ms>`), if it names one. */
export function retryAfterMs(reason: string): number | null {
  const match = /^retry after (\d+)$/.exec(reason.trim());
  return match ? Number(match[1]) : null;
}
