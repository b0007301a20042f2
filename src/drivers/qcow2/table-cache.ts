/**
 * A bounded cache of cluster-sized metadata tables (L2 tables, refcount
 * blocks), keyed by host offset. Entries are pinned while a request uses
 * them, so only unpinned ones are evicted (least recently used first); when
 * every entry is pinned the cache overshoots its bound rather than deadlock.
 *
 * Dirtiness is a generation count: a write-back records the generation it
 * copied and marks the entry clean only if nothing changed since, so a
 * change made while the copy is being written is never lost.
 */

export interface CachedTable {
  readonly offset: number;
  readonly buf: Buffer;
  gen: number;
  cleanGen: number;
  pins: number;
  lastUse: number;
  /** Bytes [dirtyFrom, dirtyTo) differ from the disk (empty when from >= to). */
  dirtyFrom: number;
  dirtyTo: number;
}

/** A copy of the part of a table that must be written, and the generation it shows. */
export interface TableCopy {
  entry: CachedTable;
  offset: number;
  data: Buffer;
  gen: number;
}

const SECTOR = 512;

export interface TableCacheIo {
  load(offset: number, buf: Buffer): Promise<void>;
  /** Writes dirty entries back, in whatever order the metadata rules demand. */
  writeBack(entries: CachedTable[]): Promise<void>;
}

export class TableCache {
  private readonly map = new Map<number, CachedTable>();
  private readonly loads = new Map<number, Promise<CachedTable>>();
  /** Entries whose generation is ahead of what is on disk (kept so flushes need not scan the cache). */
  private readonly dirty = new Set<CachedTable>();
  private tick = 0;

  constructor(readonly tableSize: number, private capacity: number, private readonly io: TableCacheIo) {}

  get size(): number {
    return this.map.size;
  }

  /** A cached table, or undefined; does not load. */
  peek(offset: number): CachedTable | undefined {
    const e = this.map.get(offset);
    if (e) e.lastUse = ++this.tick;
    return e;
  }

  /** The table at `offset`, loaded if needed, pinned until `release`. */
  acquire(offset: number): CachedTable | Promise<CachedTable> {
    const e = this.map.get(offset);
    if (e) {
      e.lastUse = ++this.tick;
      e.pins++;
      return e;
    }
    return this.loadPinned(offset);
  }

  release(e: CachedTable): void {
    e.pins--;
  }

  /**
   * Adds a table that exists only in memory so far (a new L2 table or
   * refblock); it starts dirty and pinned. The caller makes room first.
   */
  insert(offset: number, buf: Buffer): CachedTable {
    const e: CachedTable = { offset, buf, gen: 1, cleanGen: 0, pins: 1, lastUse: ++this.tick, dirtyFrom: 0, dirtyTo: buf.length };
    this.map.set(offset, e);
    this.dirty.add(e);
    return e;
  }

  /** Adds a table whose content is already on disk (clean, unpinned). */
  insertClean(offset: number, buf: Buffer): CachedTable {
    const e: CachedTable = { offset, buf, gen: 0, cleanGen: 0, pins: 0, lastUse: ++this.tick, dirtyFrom: buf.length, dirtyTo: 0 };
    this.map.set(offset, e);
    return e;
  }

  /** Records a change of bytes [from, to) of the table (the whole table by default). */
  markDirty(e: CachedTable, from = 0, to = e.buf.length): void {
    e.gen++;
    if (from < e.dirtyFrom) e.dirtyFrom = from;
    if (to > e.dirtyTo) e.dirtyTo = to;
    this.dirty.add(e);
  }

  /**
   * The sectors of a table that changed since it was last written: a table
   * loaded from disk (or written once) only needs its changed part rewritten.
   */
  dirtyCopy(e: CachedTable): TableCopy {
    const from = Math.floor(e.dirtyFrom / SECTOR) * SECTOR;
    const to = Math.min(e.buf.length, Math.ceil(e.dirtyTo / SECTOR) * SECTOR);
    return { entry: e, offset: e.offset + from, data: Buffer.from(e.buf.subarray(from, to)), gen: e.gen };
  }

  /** Records that the copy reached the disk; the entry is clean unless it changed meanwhile. */
  markWritten(copy: TableCopy): void {
    const e = copy.entry;
    if (e.cleanGen < copy.gen) e.cleanGen = copy.gen;
    if (e.cleanGen === e.gen) {
      e.dirtyFrom = e.buf.length;
      e.dirtyTo = 0;
      this.dirty.delete(e);
    }
  }

  dirtyEntries(): CachedTable[] {
    return [...this.dirty];
  }

  hasDirty(): boolean {
    return this.dirty.size > 0;
  }

  /** Drops a table that no longer exists (freed); its content is discarded. */
  forget(offset: number): void {
    const e = this.map.get(offset);
    if (e) this.dirty.delete(e);
    this.map.delete(offset);
  }

  /** Drops everything without writing (make-empty rewrites all metadata). */
  clear(): void {
    this.map.clear();
    this.dirty.clear();
  }

  /** Evicts until there is room for one more entry (or nothing evictable is left). */
  async makeRoom(): Promise<void> {
    while (this.map.size >= this.capacity) {
      const victim = this.victim();
      if (!victim) return;
      if (victim.gen !== victim.cleanGen) {
        await this.io.writeBack([victim]);
        if (victim.gen !== victim.cleanGen || victim.pins > 0) continue;
      }
      if (this.map.get(victim.offset) === victim) this.map.delete(victim.offset);
    }
  }

  private victim(): CachedTable | null {
    let best: CachedTable | null = null;
    let bestClean: CachedTable | null = null;
    for (const e of this.map.values()) {
      if (e.pins > 0) continue;
      if (e.gen === e.cleanGen) {
        if (!bestClean || e.lastUse < bestClean.lastUse) bestClean = e;
      } else if (!best || e.lastUse < best.lastUse) {
        best = e;
      }
    }
    return bestClean ?? best;
  }

  private async loadPinned(offset: number): Promise<CachedTable> {
    for (;;) {
      let p = this.loads.get(offset);
      if (!p) {
        p = this.load(offset);
        this.loads.set(offset, p);
        const done = (): void => { this.loads.delete(offset); };
        p.then(done, done);
      }
      await p;
      // Another request may have evicted it between the load and this continuation.
      const e = this.map.get(offset);
      if (e) {
        e.pins++;
        e.lastUse = ++this.tick;
        return e;
      }
    }
  }

  private async load(offset: number): Promise<CachedTable> {
    await this.makeRoom();
    const existing = this.map.get(offset);
    if (existing) return existing;
    const buf = Buffer.allocUnsafe(this.tableSize);
    await this.io.load(offset, buf);
    const again = this.map.get(offset);
    if (again) return again;
    return this.insertClean(offset, buf);
  }
}
