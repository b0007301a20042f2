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
import { RangeLock, type RangeLockGuard } from '../block/range-lock.js';

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

/** One write in the window, from taking its room until the secondary answered. */
interface Ticket {
  readonly length: number;
  readonly guard: RangeLockGuard;
  readonly send: ForwardSend;
}

/** A `settled()` caller and the writes it still waits for. */
interface SettleWaiter {
  readonly pending: Set<Ticket>;
  readonly resolve: () => void;
}

const RESOLVED: Promise<void> = Promise.resolve();

export class ForwardWindow {
  private readonly order = new RangeLock();
  private readonly outstanding = new Set<Ticket>();
  private bytes = 0;
  /** Writes that took their room and wait for an overlapping earlier one. */
  private ordering = 0;
  private roomWaiters: Array<() => void> = [];
  /** Owned writes whose sends start together after the writers' replies. */
  private deferred: Ticket[] = [];
  private settleWaiters: SettleWaiter[] = [];

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
   * never reuses): the writer is then answered as soon as the write has its
   * place in the window, and `send` runs after the writer's reply went out,
   * batched with the other writes of the same turn of the event loop (one
   * socket write for all of them).
   *
   * Every replicated write passes here, so the common case (room, no
   * overlapping write ahead) takes no promise of its own.
   */
  submit(offset: number, length: number, send: ForwardSend, owned = false): Promise<void> {
    if (this.limits.maxBytes === 0) return send(noop);
    if (this.outstanding.size + this.ordering === 0 || this.hasRoom(length)) {
      const guard = this.order.tryAcquire(offset, offset + length, 'exclusive');
      if (guard) {
        this.bytes += length;
        return this.start({ length, guard, send }, owned);
      }
    }
    return this.submitQueued(offset, length, send, owned);
  }

  private async submitQueued(offset: number, length: number, send: ForwardSend, owned: boolean): Promise<void> {
    while (this.outstanding.size + this.ordering > 0 && !this.hasRoom(length)) {
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    }
    // The room is taken before waiting for the order, so concurrent writers cannot all pass the check.
    this.bytes += length;
    this.ordering++;
    const guard = await this.order.acquire(offset, offset + length, 'exclusive');
    this.ordering--;
    return this.start({ length, guard, send }, owned);
  }

  private start(ticket: Ticket, owned: boolean): Promise<void> {
    this.outstanding.add(ticket);
    if (owned) {
      this.deferred.push(ticket);
      // Two hops: the writer's reply is queued with setImmediate during this turn, and goes first.
      if (this.deferred.length === 1) setImmediate(this.startDeferredSoon);
      return RESOLVED;
    }
    return new Promise<void>((resolve) => {
      const answered = (): void => {
        this.finish(ticket);
        resolve();
      };
      // The writer goes on at `released` or at the answer, whichever comes first.
      ticket.send(() => resolve()).then(answered, answered);
    });
  }

  private readonly startDeferredSoon = (): void => {
    setImmediate(this.startDeferred);
  };

  private readonly startDeferred = (): void => {
    const tickets = this.deferred;
    this.deferred = [];
    for (const ticket of tickets) {
      const answered = (): void => this.finish(ticket);
      ticket.send(noop).then(answered, answered);
    }
  };

  private finish(ticket: Ticket): void {
    ticket.guard.release();
    this.bytes -= ticket.length;
    this.outstanding.delete(ticket);
    if (this.settleWaiters.length > 0) this.wakeSettled(ticket);
    this.wakeAll();
  }

  /**
   * Resolves once every write acknowledged so far has been answered by the
   * secondary (writes acknowledged later are not waited for, so a flush
   * under a steady stream of writes still ends).
   */
  settled(): Promise<void> {
    if (this.outstanding.size === 0) return RESOLVED;
    return new Promise<void>((resolve) => {
      this.settleWaiters.push({ pending: new Set(this.outstanding), resolve });
    });
  }

  private wakeSettled(ticket: Ticket): void {
    const still: SettleWaiter[] = [];
    for (const w of this.settleWaiters) {
      w.pending.delete(ticket);
      if (w.pending.size === 0) w.resolve();
      else still.push(w);
    }
    this.settleWaiters = still;
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
