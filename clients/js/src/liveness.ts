/**
 * Noticing a dead connection from a browser, which cannot see WebSocket pings.
 *
 * Every frame re-arms a timer of `welcome.ping_interval_s`. When it runs out the
 * client sends a probe the edge always answers; no frame within the probe timeout
 * means the edge or the network went away without a close (a frozen pod, a dead
 * NAT entry), which TCP alone may not report for minutes.
 */

export class Liveness {
  private idle: ReturnType<typeof setTimeout> | null = null;
  private dead: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly intervalMs: number,
    private readonly probeTimeoutMs: number,
    private readonly probe: () => void,
    private readonly gone: (silentMs: number) => void,
  ) {
    this.touch();
  }

  /** A frame arrived: the connection is alive. */
  touch(): void {
    this.clear();
    this.idle = setTimeout(() => this.ask(), this.intervalMs);
  }

  stop(): void {
    this.clear();
  }

  private ask(): void {
    this.idle = null;
    this.probe();
    this.dead = setTimeout(() => {
      this.dead = null;
      this.gone(this.intervalMs + this.probeTimeoutMs);
    }, this.probeTimeoutMs);
  }

  private clear(): void {
    if (this.idle !== null) clearTimeout(this.idle);
    if (this.dead !== null) clearTimeout(this.dead);
    this.idle = this.dead = null;
  }
}
