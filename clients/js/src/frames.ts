/** Server frames: one JSON message per line; the edge coalesces several into one frame. */

export interface Frame {
  type: string;
  id?: string;
  payload: Record<string, unknown>;
}

/** Every message in one text frame, in order. A line that is not a JSON object is skipped. */
export function splitFrame(text: string): Frame[] {
  const frames: Frame[] = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      continue;
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) continue;
    const msg = parsed as Record<string, unknown>;
    if (typeof msg.type !== "string") continue;
    const payload = msg.payload;
    frames.push({
      type: msg.type,
      id: typeof msg.id === "string" ? msg.id : undefined,
      payload:
        payload !== null && typeof payload === "object" && !Array.isArray(payload)
          ? (payload as Record<string, unknown>)
          : {},
    });
  }
  return frames;
}
