/**
 * Where each subscription stands in its channel's history, so that events replayed
 * after a reconnect (`since`, resume) are delivered once: by offset, within one epoch.
 */

export interface Position {
  offset: number;
  epoch: string;
}

export class Positions {
  private readonly byChannel = new Map<string, Position>();

  get(channel: string): Position | undefined {
    return this.byChannel.get(channel);
  }

  /** Note the position an ack reports (only when nothing newer is known). */
  start(channel: string, offset: unknown, epoch: unknown): void {
    if (typeof offset !== "number" || typeof epoch !== "string") return;
    const known = this.byChannel.get(channel);
    if (known && known.epoch === epoch && known.offset >= offset) return;
    this.byChannel.set(channel, { offset, epoch });
  }

  /** Start over from where the channel stands now (its history could not be recovered). */
  reset(channel: string, offset: unknown, epoch: unknown): void {
    this.byChannel.delete(channel);
    this.start(channel, offset, epoch);
  }

  /** True when an event was delivered before; otherwise it becomes the position. */
  seen(channel: string, offset: unknown, epoch: unknown): boolean {
    if (typeof offset !== "number" || typeof epoch !== "string") return false;
    const known = this.byChannel.get(channel);
    if (known && known.epoch === epoch && offset <= known.offset) return true;
    this.byChannel.set(channel, { offset, epoch });
    return false;
  }

  /** Every known position (what a reconnecting SSE stream sends as `Last-Event-ID`). */
  all(): Map<string, Position> {
    return new Map(this.byChannel);
  }

  forget(channel: string): void {
    this.byChannel.delete(channel);
  }
}
