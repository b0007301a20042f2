/**
 * The guest-to-host mapping: the L1 table (always in memory, written back in
 * 512-byte sectors) and L2 tables through a bounded cache. New L2 tables are
 * created under a lock so that two writers in the same 512 MiB (at 64 KiB
 * clusters) region do not both create one.
 */
import type { BlockError } from '../../block/errors.js';
import { L2_COPIED_HI, entryOffset, l1ReservedBits, readHi, readLo, writeEntry } from './format.js';
import type { ImageFile } from './image-file.js';
import type { MetadataMap } from './metadata-map.js';
import { Mutex } from './mutex.js';
import type { Refcounts } from './refcounts.js';
import { TableCache, type CachedTable } from './table-cache.js';

export interface L2Host {
  readonly file: ImageFile;
  readonly meta: MetadataMap;
  readonly refcounts: Refcounts;
  corruption(message: string): BlockError;
  writeBackL2(entries: CachedTable[]): Promise<void>;
}

const SECTOR = 512;

export class L2Tables {
  readonly cache: TableCache;
  readonly clusterSize: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  readonly l1: Buffer;
  private readonly l1Dirty = new Set<number>();
  private readonly createLock = new Mutex();
  /** L1 entries found unusable at open (overlapping other metadata). */
  private readonly badL1 = new Map<number, string>();

  constructor(
    private readonly host: L2Host,
    clusterBits: number,
    public l1Offset: number,
    readonly l1Size: number,
    l1: Buffer,
    cacheEntries: number,
  ) {
    this.clusterSize = 2 ** clusterBits;
    this.l2Entries = this.clusterSize / 8;
    this.l1 = l1;
    this.cache = new TableCache(this.clusterSize, cacheEntries, {
      load: (offset, buf) => this.host.file.read(offset, buf),
      writeBack: (entries) => this.host.writeBackL2(entries),
    });
  }

  markBad(l1Index: number, message: string): void {
    this.badL1.set(l1Index, message);
  }

  /** The L2 table offset of an L1 entry, 0 when unallocated; throws on a damaged entry. */
  tableOffset(l1Index: number): number {
    const hi = readHi(this.l1, l1Index);
    const lo = readLo(this.l1, l1Index);
    if (hi === 0 && lo === 0) return 0;
    const bad = this.badL1.get(l1Index);
    if (bad) throw this.host.corruption(bad);
    if (l1ReservedBits(hi, lo)) {
      throw this.host.corruption(`L1 entry ${l1Index} has reserved bits set (0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')})`);
    }
    const off = entryOffset(hi, lo);
    if (off === 0) return 0;
    if (off % this.clusterSize !== 0) {
      throw this.host.corruption(`L2 table offset 0x${off.toString(16)} unaligned (L1 index: ${l1Index})`);
    }
    // Tables created since the last write-back exist only in the cache, below the high-water mark.
    if (off >= this.host.refcounts.highWater) {
      throw this.host.corruption(`L2 table offset 0x${off.toString(16)} (L1 index: ${l1Index}) is past the end of the image file`);
    }
    return off;
  }

  isCopied(l1Index: number): boolean {
    return (readHi(this.l1, l1Index) & L2_COPIED_HI) !== 0;
  }

  /** The table for `l1Index`, pinned; null when it does not exist. */
  acquire(l1Index: number): CachedTable | null | Promise<CachedTable | null> {
    const off = this.tableOffset(l1Index);
    if (off === 0) return null;
    return this.cache.acquire(off);
  }

  /**
   * The table for `l1Index`, pinned, created (or copied, when not COPIED)
   * if needed so that the caller may change its entries.
   */
  async acquireForWrite(l1Index: number): Promise<CachedTable> {
    const off = this.tableOffset(l1Index);
    if (off !== 0 && this.isCopied(l1Index)) return this.cache.acquire(off);
    await this.createLock.lock();
    try {
      const now = this.tableOffset(l1Index);
      if (now !== 0 && this.isCopied(l1Index)) return await this.cache.acquire(now);
      let source: CachedTable | null = null;
      if (now !== 0) source = await this.cache.acquire(now);
      try {
        // Make room first: an eviction can fail, and must not strand a new cluster.
        await this.cache.makeRoom();
        const alloc = await this.host.refcounts.allocate(1);
        const newOff = alloc.start * this.clusterSize;
        const buf = source ? Buffer.from(source.buf) : Buffer.alloc(this.clusterSize);
        const e = this.cache.insert(newOff, buf);
        this.host.meta.add(alloc.start, 1, 'active L2 table');
        writeEntry(this.l1, l1Index, newOff, L2_COPIED_HI, 0);
        this.l1Dirty.add(Math.floor((l1Index * 8) / SECTOR));
        if (now !== 0) {
          // The old table was shared (not COPIED): drop this image's reference to it.
          this.cache.forget(now);
          this.host.meta.remove(now / this.clusterSize);
          this.host.refcounts.free(now / this.clusterSize);
        }
        return e;
      } finally {
        if (source) this.cache.release(source);
      }
    } finally {
      this.createLock.unlock();
    }
  }

  /** Clears an L1 entry and queues the table's cluster for freeing (fallback make-empty). */
  dropTable(l1Index: number): void {
    const off = entryOffset(readHi(this.l1, l1Index), readLo(this.l1, l1Index));
    if (off === 0) return;
    writeEntry(this.l1, l1Index, 0, 0, 0);
    this.l1Dirty.add(Math.floor((l1Index * 8) / SECTOR));
    this.cache.forget(off);
    this.host.meta.remove(off / this.clusterSize);
    this.host.refcounts.free(off / this.clusterSize);
  }

  get l1IsDirty(): boolean {
    return this.l1Dirty.size > 0;
  }

  /** Copies of the dirty L1 sectors (cleared; restore on failure). */
  takeDirtyL1(): Array<{ offset: number; data: Buffer; sector: number }> {
    const out: Array<{ offset: number; data: Buffer; sector: number }> = [];
    const bytes = this.l1Size * 8;
    for (const s of this.l1Dirty) {
      const start = s * SECTOR;
      const end = Math.min(start + SECTOR, bytes);
      out.push({ sector: s, offset: this.l1Offset + start, data: Buffer.from(this.l1.subarray(start, end)) });
    }
    this.l1Dirty.clear();
    out.sort((a, b) => a.offset - b.offset);
    return out;
  }

  restoreDirtyL1(sectors: number[]): void {
    for (const s of sectors) this.l1Dirty.add(s);
  }

  /** Forgets every table (make-empty) and zeroes the L1 in memory. */
  reset(l1Offset: number): void {
    this.cache.clear();
    this.l1.fill(0);
    this.l1Dirty.clear();
    this.badL1.clear();
    this.l1Offset = l1Offset;
  }
}
