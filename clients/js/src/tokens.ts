/**
 * Reading (never verifying) JWT-shaped tokens: a token's `exp`, so an expired token is
 * replaced before a connection attempt the edge would refuse; a resume token's
 * subscriptions, so the client knows which ones the edge restores by itself.
 */

function payloadOf(token: string): Record<string, unknown> | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "===".slice((base64.length + 3) % 4));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const body: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return body !== null && typeof body === "object" ? (body as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** The token's `exp` in milliseconds, or null when it cannot be read. */
export function expiresAtMs(token: string): number | null {
  const exp = payloadOf(token)?.exp;
  return typeof exp === "number" ? exp * 1000 : null;
}

/** Channels a resume token lists: the edge resubscribes them on `?resume=`. */
export function resumedChannels(resumeToken: string): Set<string> {
  const subs = payloadOf(resumeToken)?.subs;
  const channels = new Set<string>();
  if (Array.isArray(subs)) {
    for (const sub of subs) {
      const channel = (sub as { channel?: unknown } | null)?.channel;
      if (typeof channel === "string") channels.add(channel);
    }
  }
  return channels;
}
