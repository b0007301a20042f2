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
  granted: boolean;
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

export class RangeLock {
  /** Granted and waiting entries in arrival order. */
  private entries: Entry[] = [];
  /** Entries not yet granted; with none, a release has nobody to wake. */
  private waiters = 0;

  /** Number of granted holders (for tests and drain checks). */
  get held(): number {
    let n = 0;
    for (const e of this.entries) if (e.granted) n++;
    return n;
  }

  get waiting(): number {
    return this.entries.length - this.held;
  }

  /**
   * Acquires [start, end). Resolves at once (without a microtask hop for the
   * caller that checks `tryAcquire` first) when nothing earlier conflicts.
   */
  acquire(start: number, end: number, mode: LockMode = 'exclusive'): Promise<RangeLockGuard> {
    const guard = this.tryAcquire(start, end, mode);
    if (guard) return Promise.resolve(guard);
    const entry: Entry = { start, end, mode, granted: false, resolve: null, released: false };
    this.entries.push(entry);
    this.waiters++;
    return new Promise<RangeLockGuard>((resolve) => {
      entry.resolve = () => resolve(new Guard(this, entry));
    });
  }

  /** Grants the range now if no earlier entry conflicts, else returns null. */
  tryAcquire(start: number, end: number, mode: LockMode = 'exclusive'): RangeLockGuard | null {
    if (!(end > start)) throw new RangeError(`empty lock range [${start}, ${end})`);
    const entry: Entry = { start, end, mode, granted: true, resolve: null, released: false };
    for (const other of this.entries) {
      if (conflicts(entry, other)) return null;
    }
    this.entries.push(entry);
    return new Guard(this, entry);
  }

  /** True when some granted or waiting entry overlaps [start, end) in a conflicting mode. */
  isContended(start: number, end: number, mode: LockMode = 'exclusive'): boolean {
    const probe: Entry = { start, end, mode, granted: false, resolve: null, released: false };
    return this.entries.some((e) => conflicts(probe, e));
  }

  /** @internal */
  releaseEntry(entry: Entry): void {
    if (entry.released) throw new Error('range lock released twice');
    entry.released = true;
    const entries = this.entries;
    const idx = entries.lastIndexOf(entry);
    if (idx === entries.length - 1) entries.pop();
    else if (idx >= 0) entries.splice(idx, 1);
    if (this.waiters > 0) this.wake();
  }

  private wake(): void {
    // A waiter is granted when no entry before it (granted or still waiting)
    // conflicts with it: arrival order is kept among overlapping requests.
    for (let i = 0; i < this.entries.length; i++) {
      const e = this.entries[i]!;
      if (e.granted) continue;
      let blocked = false;
      for (let j = 0; j < i; j++) {
        if (conflicts(e, this.entries[j]!)) { blocked = true; break; }
      }
      if (!blocked) {
        e.granted = true;
        this.waiters--;
        const resolve = e.resolve;
        e.resolve = null;
        resolve?.();
      }
    }
  }
}
