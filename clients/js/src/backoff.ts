/**
 * Reconnect delays (DESIGN §4): full jitter, 0.5 s doubling to 20 s, or the edge's
 * own hint when it gave one (1013 `retry after <ms>`, `Retry-After`).
 */

export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 20_000;

/** Milliseconds to wait before reconnect attempt `attempt` (0-based): U(0, min(cap, base·2ⁿ)). */
export function fullJitter(
  attempt: number,
  random: () => number = Math.random,
  baseMs = BACKOFF_BASE_MS,
  capMs = BACKOFF_CAP_MS,
): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), 16));
  return random() * ceiling;
}

/**
 * Milliseconds to wait when the edge asked for `hintMs`: at least that, stretched by
 * U(1, 1.5) so clients refused together do not all come back together, never over
 * the cap.
 */
export function hintedDelay(
  hintMs: number,
  random: () => number = Math.random,
  capMs = BACKOFF_CAP_MS,
): number {
  return Math.min(capMs, hintMs * (1 + 0.5 * random()));
}
