/**
 * The primary's forwarding window: how many replicated writes may be on
 * their way to the secondary while the writer has already been answered.
 *
 * Why this is safe: between two checkpoints the secondary's copy of the
 * primary's writes is never used on its own. A failover rolls the secondary
 * back to the last checkpoint, and the next checkpoint waits for the window
 * to empty first (as do flush, the daemon's `stop`, and the replication
 * node's checkpoint and stop). QEMU makes every guest write wait for the
 * secondary's reply; the window lets the writer go once the payload is in
 * the kernel's socket buffer, which takes the network round trip and the
 * secondary's copy-before-write out of the guest's write latency.
 *
 * What it keeps: writes that overlap reach the secondary in the order they
 * were submitted (a later one is not sent before the earlier one's reply);
 * the bytes and requests outstanding are bounded, so a slow secondary slows
 * the writer down instead of growing memory.
 */
import { RangeLock } from '../block/range-lock.js';

export interface ForwardWindowLimits {
  /** Bytes sent but not yet answered by the secondary; 0 makes every write wait for its answer (QEMU's behaviour). */
  maxBytes: number;
  /** Requests sent but not yet answered. */
  maxRequests: number;
}

export const DEFAULT_FORWARD_WINDOW: ForwardWindowLimits = { maxBytes: 8 << 20, maxRequests: 64 };

/**
 * `send` starts one forwarded write: it calls `released` once the payload
 * may be reused and resolves when the secondary answered. It must not
 * reject: the caller latches errors itself.
 */
export type ForwardSend = (released: () => void) => Promise<void>;

export class ForwardWindow {
  private readonly order = new RangeLock();
  private readonly outstanding = new Set<Promise<void>>();
  private bytes = 0;
  /** Writes that took their room and wait for an overlapping earlier one. */
  private ordering = 0;
  private roomWaiters: Array<() => void> = [];
  /** Sends of owned writes, started together after the writers' replies. */
  private deferred: Array<() => void> = [];

  constructor(readonly limits: ForwardWindowLimits) {}

  get bytesOutstanding(): number {
    return this.bytes;
  }

  get requestsOutstanding(): number {
    return this.outstanding.size;
  }

  /**
   * Resolves once the write may be acknowledged to the writer. `owned`
   * means the payload belongs to the window (a copy, or a buffer its owner
   * never reuses): the
   * writer is then answered as soon as the write has its place in the
   * window, and `send` runs after the writer's reply went out, batched with
   * the other writes of the same turn of the event loop (one socket write
   * for all of them).
   */
  async submit(offset: number, length: number, send: ForwardSend, owned = false): Promise<void> {
    if (this.limits.maxBytes === 0) {
      await send(noop);
      return;
    }
    while (this.outstanding.size + this.ordering > 0 && !this.hasRoom(length)) {
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    }
    // The room is taken before waiting for the order, so concurrent writers cannot all pass the check.
    this.bytes += length;
    this.ordering++;
    const guard = await this.order.acquire(offset, offset + length, 'exclusive');
    this.ordering--;
    let release: (() => void) | null = null;
    const released = owned ? null : new Promise<void>((resolve) => { release = resolve; });
    const started = owned
      ? new Promise<void>((resolve) => this.defer(() => resolve(send(noop))))
      : send(release!);
    const answered = started.finally(() => {
      guard.release();
      this.bytes -= length;
      this.outstanding.delete(answered);
      this.wakeAll();
    });
    this.outstanding.add(answered);
    if (released) await Promise.race([released, answered]);
  }

  private defer(start: () => void): void {
    this.deferred.push(start);
    if (this.deferred.length > 1) return;
    // Two hops: the writer's reply is queued with setImmediate during this turn, and goes first.
    setImmediate(() => setImmediate(this.startDeferred));
  }

  private readonly startDeferred = (): void => {
    const starts = this.deferred;
    this.deferred = [];
    for (const start of starts) start();
  };

  /**
   * Resolves once every write acknowledged so far has been answered by the
   * secondary (writes acknowledged later are not waited for, so a flush
   * under a steady stream of writes still ends).
   */
  settled(): Promise<void> {
    if (this.outstanding.size === 0) return Promise.resolve();
    return Promise.all([...this.outstanding]).then(noop);
  }

  private hasRoom(length: number): boolean {
    return this.outstanding.size + this.ordering < this.limits.maxRequests && this.bytes + length <= this.limits.maxBytes;
  }

  private wakeAll(): void {
    // Every waiter re-checks; waking all keeps small writes from queueing behind a large one.
    const waiters = this.roomWaiters;
    if (waiters.length === 0) return;
    this.roomWaiters = [];
    for (const w of waiters) w();
  }
}

function noop(): void {}
