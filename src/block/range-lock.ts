/**
 * Serialises overlapping requests on byte (or cluster) ranges.
 *
 * Shared holders may overlap each other; an exclusive holder overlaps nobody.
 * Waiters are served in arrival order per conflict: a request never jumps
 * ahead of an earlier one it overlaps, so writers cannot starve behind a
 * stream of readers.
 */

export type LockMode = 'shared' | 'exclusive';

export interface RangeLockGuard {
  readonly start: number;
  readonly end: number;
  readonly mode: LockMode;
  release(): void;
}

interface Entry {
  start: number;
  end: number;
  mode: LockMode;
  /** Position in `granted` while granted (for O(1) removal), -1 while waiting. */
  slot: number;
  resolve: (() => void) | null;
  released: boolean;
}

class Guard implements RangeLockGuard {
  constructor(private readonly lock: RangeLock, private readonly entry: Entry) {}
  get start(): number { return this.entry.start; }
  get end(): number { return this.entry.end; }
  get mode(): LockMode { return this.entry.mode; }
  release(): void { this.lock.releaseEntry(this.entry); }
}

function conflicts(a: Entry, b: Entry): boolean {
  if (a.end <= b.start || b.end <= a.start) return false;
  return a.mode === 'exclusive' || b.mode === 'exclusive';
}

/**
 * Granted holders are kept unordered (a release is a swap-remove); waiters
 * in arrival order. That is enough for the ordering rule: a holder granted
 * after some waiter arrived was checked against that waiter and does not
 * conflict with it, so "no earlier entry conflicts" is "no holder and no
 * earlier waiter conflicts".
 */
export class RangeLock {
  private readonly granted: Entry[] = [];
  private queue: Entry[] = [];

  /** Number of granted holders (for tests and drain checks). */
  get held(): number {
    return this.granted.length;
  }

  get waiting(): number {
    return this.queue.length;
  }

  /**
   * Acquires [start, end). Resolves at once (without a microtask hop for the
   * caller that checks `tryAcquire` first) when nothing earlier conflicts.
   */
  acquire(start: number, end: number, mode: LockMode = 'exclusive'): Promise<RangeLockGuard> {
    const guard = this.tryAcquire(start, end, mode);
    if (guard) return Promise.resolve(guard);
    const entry: Entry = { start, end, mode, slot: -1, resolve: null, released: false };
    this.queue.push(entry);
    return new Promise<RangeLockGuard>((resolve) => {
      entry.resolve = () => resolve(new Guard(this, entry));
    });
  }

  /** Grants the range now if no earlier entry conflicts, else returns null. */
  tryAcquire(start: number, end: number, mode: LockMode = 'exclusive'): RangeLockGuard | null {
    if (!(end > start)) throw new RangeError(`empty lock range [${start}, ${end})`);
    const entry: Entry = { start, end, mode, slot: -1, resolve: null, released: false };
    if (this.isBlocked(entry, this.queue.length)) return null;
    this.grant(entry);
    return new Guard(this, entry);
  }

  /** True when some granted or waiting entry overlaps [start, end) in a conflicting mode. */
  isContended(start: number, end: number, mode: LockMode = 'exclusive'): boolean {
    const probe: Entry = { start, end, mode, slot: -1, resolve: null, released: false };
    return this.isBlocked(probe, this.queue.length);
  }

  /** @internal */
  releaseEntry(entry: Entry): void {
    if (entry.released) throw new Error('range lock released twice');
    entry.released = true;
    const granted = this.granted;
    const last = granted.pop()!;
    if (last !== entry) {
      granted[entry.slot] = last;
      last.slot = entry.slot;
    }
    entry.slot = -1;
    if (this.queue.length > 0) this.wake();
  }

  /** Whether a holder, or one of the first `waitersAhead` waiters, conflicts with `entry`. */
  private isBlocked(entry: Entry, waitersAhead: number): boolean {
    for (const other of this.granted) if (conflicts(entry, other)) return true;
    const queue = this.queue;
    for (let i = 0; i < waitersAhead; i++) if (conflicts(entry, queue[i]!)) return true;
    return false;
  }

  private grant(entry: Entry): void {
    entry.slot = this.granted.length;
    this.granted.push(entry);
  }

  private wake(): void {
    // A waiter goes when no holder and no waiter before it conflicts:
    // arrival order is kept among overlapping requests.
    const queue = this.queue;
    const still: Entry[] = [];
    const ready: Entry[] = [];
    for (const e of queue) {
      let blocked = false;
      for (const other of this.granted) if (conflicts(e, other)) { blocked = true; break; }
      if (!blocked) for (const w of still) if (conflicts(e, w)) { blocked = true; break; }
      if (blocked) still.push(e);
      else {
        this.grant(e);
        ready.push(e);
      }
    }
    this.queue = still;
    for (const e of ready) {
      const resolve = e.resolve;
      e.resolve = null;
      resolve?.();
    }
  }
}
