/**
 * Refcounts: the reftable (always in memory), refblocks (through a bounded
 * cache), cluster allocation, deferred frees and growing the reftable.
 *
 * Invariants the rest of the driver relies on:
 * - a cluster is handed out only when its refcount is 0, and its new
 *   refcount (1) is in the cache before the caller can point at it;
 * - frees are only queued here; they are applied (refcount decremented)
 *   after the L1/L2 change that dropped the reference is durable, so a
 *   cluster is never reused while a durable pointer to it may still exist;
 * - a new refblock always counts itself (it is placed inside its own range,
 *   which holds no used cluster since no refblock described it).
 */
import { BlockError } from '../../block/errors.js';
import { Mutex } from './mutex.js';
import { MAX_REFTABLE_BYTES, getRefcount, reftableReservedBits, setRefcount, writeEntry, entryOffset } from './format.js';
import type { ImageFile } from './image-file.js';
import type { MetadataMap } from './metadata-map.js';
import { TableCache, type CachedTable } from './table-cache.js';

export interface RefcountHost {
  readonly file: ImageFile;
  readonly meta: MetadataMap;
  readonly writeback: Mutex;
  corruption(message: string): BlockError;
  /** Stops writes after a metadata update failed half-way. */
  fail(reason: string, cause: unknown): BlockError;
  /** Writes dirty refblocks (and reftable entries) and syncs; the caller holds `writeback`. */
  writeRefcountsLocked(): Promise<void>;
  writeBackRefblocks(entries: CachedTable[]): Promise<void>;
  /** Writes bytes into the header and syncs. */
  writeHeaderSync(offset: number, bytes: Buffer): Promise<void>;
}

export interface Allocation {
  /** First cluster index of the run. */
  start: number;
  count: number;
  /** Clusters at or above this index were never written: they read as zeroes. */
  virginFrom: number;
}

export interface RefcountLayout {
  clusterBits: number;
  order: number;
  reftableOffset: number;
  reftableClusters: number;
  reftable: Buffer;
  cacheEntries: number;
  fileLength: number;
}

export class Refcounts {
  readonly cache: TableCache;
  /** Serialises allocation and refcount changes. */
  readonly lock = new Mutex();
  readonly order: number;
  readonly entriesPerBlock: number;
  readonly clusterSize: number;
  reftableOffset: number;
  reftableClusters: number;
  /** Host offset of each refblock (0 = none); -1 marks an invalid entry. */
  private rt: Float64Array;
  private rtBuf: Buffer;
  private readonly rtDirty = new Set<number>();
  private freeHint = 0;
  /** Bytes of the file that may hold old data; clusters past it read as zeroes. */
  highWater: number;
  private pendingFrees: number[] = [];

  constructor(private readonly host: RefcountHost, layout: RefcountLayout) {
    this.order = layout.order;
    this.clusterSize = 2 ** layout.clusterBits;
    this.entriesPerBlock = (this.clusterSize * 8) >> layout.order;
    this.reftableOffset = layout.reftableOffset;
    this.reftableClusters = layout.reftableClusters;
    this.rtBuf = layout.reftable;
    this.rt = Refcounts.decode(layout.reftable, this.clusterSize);
    this.highWater = layout.fileLength;
    this.cache = new TableCache(this.clusterSize, layout.cacheEntries, {
      load: (offset, buf) => this.host.file.read(offset, buf),
      writeBack: (entries) => this.host.writeBackRefblocks(entries),
    });
  }

  private static decode(buf: Buffer, clusterSize: number): Float64Array {
    const n = buf.length / 8;
    const rt = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const hi = buf.readUInt32BE(i * 8);
      const lo = buf.readUInt32BE(i * 8 + 4);
      const off = entryOffset(hi, lo);
      rt[i] = reftableReservedBits(lo) || off % clusterSize !== 0 || hi > 0x00ffffff ? -1 : off;
    }
    return rt;
  }

  /** Refblock offsets (for building the metadata map and for check). */
  blockOffsets(): Array<{ index: number; offset: number }> {
    const out: Array<{ index: number; offset: number }> = [];
    for (let i = 0; i < this.rt.length; i++) if (this.rt[i]! > 0) out.push({ index: i, offset: this.rt[i]! });
    return out;
  }

  /** The byte of a refblock holding entry `index` (rounded down; +8 covers any width). */
  private byteOf(index: number): number {
    return Math.floor((index << this.order) / 8);
  }

  /** Marks a reftable entry unusable (it overlaps other metadata). */
  invalidate(index: number): void {
    this.rt[index] = -1;
  }

  private blockOffset(index: number): number {
    const off = this.rt[index]!;
    if (off < 0) throw this.host.corruption(`refcount table entry ${index} is invalid (reserved bits, misaligned, or overlapping other metadata)`);
    if (off > 0 && off >= this.highWater) {
      throw this.host.corruption(`refblock offset 0x${off.toString(16)} (reftable index ${index}) is past the end of the image file`);
    }
    return off;
  }

  async refcount(cluster: number): Promise<number> {
    const index = Math.floor(cluster / this.entriesPerBlock);
    if (index >= this.rt.length) return 0;
    const off = this.blockOffset(index);
    if (off === 0) return 0;
    const e = await this.cache.acquire(off);
    try {
      return getRefcount(e.buf, cluster - index * this.entriesPerBlock, this.order);
    } finally {
      this.cache.release(e);
    }
  }

  // ------------------------------------------------------------ allocation

  /** Allocates up to `wanted` contiguous free clusters (at least one), refcount 1 each. */
  async allocate(wanted: number): Promise<Allocation> {
    await this.lock.lock();
    try {
      return await this.allocateLocked(wanted);
    } finally {
      this.lock.unlock();
    }
  }

  private async allocateLocked(wanted: number): Promise<Allocation> {
    const virginFrom = Math.ceil(this.highWater / this.clusterSize);
    const epb = this.entriesPerBlock;
    let c = this.freeHint;
    for (;;) {
      const index = Math.floor(c / epb);
      if (index >= this.rt.length) {
        await this.grow(index);
        continue;
      }
      let off = this.blockOffset(index);
      if (off === 0) off = await this.createBlock(index, c);
      const e = await this.cache.acquire(off);
      try {
        const base = index * epb;
        let i = c - base;
        while (i < epb && getRefcount(e.buf, i, this.order) !== 0) i++;
        if (i === epb) {
          c = base + epb;
          continue;
        }
        let j = i + 1;
        while (j < epb && j - i < wanted && getRefcount(e.buf, j, this.order) === 0) j++;
        const start = base + i;
        const kind = this.host.meta.overlap(start, j - i);
        if (kind) throw this.host.corruption(`free cluster in range ${start}..${base + j - 1} overlaps the ${kind} (refcounts are wrong)`);
        for (let k = i; k < j; k++) setRefcount(e.buf, k, this.order, 1);
        this.cache.markDirty(e, this.byteOf(i), this.byteOf(j - 1) + 8);
        this.freeHint = base + j;
        const end = (base + j) * this.clusterSize;
        if (end > this.highWater) this.highWater = end;
        return { start, count: j - i, virginFrom };
      } finally {
        this.cache.release(e);
      }
    }
  }

  /** A refblock for range `index`, placed at cluster `at` (free, inside the range). */
  private async createBlock(index: number, at: number): Promise<number> {
    await this.cache.makeRoom();
    const kind = this.host.meta.kindOf(at);
    if (kind) throw this.host.corruption(`cluster ${at} has no refcount but holds the ${kind}`);
    const buf = Buffer.alloc(this.clusterSize);
    setRefcount(buf, at - index * this.entriesPerBlock, this.order, 1);
    const off = at * this.clusterSize;
    const e = this.cache.insert(off, buf);
    this.cache.release(e);
    this.setReftableEntry(index, off);
    this.host.meta.add(at, 1, 'refcount block');
    if (off + this.clusterSize > this.highWater) this.highWater = off + this.clusterSize;
    return off;
  }

  private setReftableEntry(index: number, off: number): void {
    this.rt[index] = off;
    writeEntry(this.rtBuf, index, off, 0, 0);
    this.rtDirty.add(Math.floor((index * 8) / this.clusterSize));
  }

  /**
   * Moves the reftable to a bigger one (new structure, then switch): the new
   * refblocks and table go to a fresh area whose ranges no refblock covered
   * yet, they are written and synced, then one header write switches to them.
   * A crash before the switch leaves only unreferenced clusters.
   */
  private async grow(needed: number): Promise<void> {
    const cs = this.clusterSize;
    const epb = this.entriesPerBlock;
    await this.host.writeback.lock();
    try {
      await this.host.writeRefcountsLocked();
      const oldEntries = this.rt.length;
      const a = Math.max(Math.ceil(this.highWater / cs), oldEntries * epb);
      let k = 1;
      let rc = this.reftableClusters;
      let entries = 0;
      for (let iter = 0; ; iter++) {
        if (iter > 64) throw new BlockError('EIO', 'could not size the new refcount table');
        const first = Math.floor(a / epb);
        const last = Math.floor((a + k + rc - 1) / epb);
        const nk = last - first + 1;
        entries = Math.max(needed + 1, last + 1, Math.ceil(oldEntries * 1.5));
        const nrc = Math.ceil((entries * 8) / cs);
        if (nk === k && nrc === rc) break;
        k = nk;
        rc = nrc;
      }
      entries = (rc * cs) / 8;
      if (rc * cs > MAX_REFTABLE_BYTES) throw new BlockError('EFBIG', 'the refcount table would exceed 8 MiB');
      const firstRange = Math.floor(a / epb);
      const area = Buffer.alloc((k + rc) * cs);
      for (let x = a; x < a + k + rc; x++) {
        const r = Math.floor(x / epb);
        const j = r - firstRange;
        setRefcount(area.subarray(j * cs, (j + 1) * cs), x - r * epb, this.order, 1);
      }
      const table = area.subarray(k * cs);
      this.rtBuf.copy(table, 0, 0, Math.min(this.rtBuf.length, table.length));
      for (let j = 0; j < k; j++) writeEntry(table, firstRange + j, (a + j) * cs, 0, 0);
      await this.host.file.write(a * cs, area);
      await this.host.file.sync();
      const hdr = Buffer.alloc(12);
      const newOffset = (a + k) * cs;
      hdr.writeUInt32BE(Math.floor(newOffset / 2 ** 32), 0);
      hdr.writeUInt32BE(newOffset % 2 ** 32, 4);
      hdr.writeUInt32BE(rc, 8);
      try {
        await this.host.writeHeaderSync(48, hdr);
      } catch (err) {
        // Which reftable the header names is now unknown.
        throw this.host.fail('switching to the grown refcount table failed', err);
      }

      const oldCluster = this.reftableOffset / cs;
      for (let i = 0; i < this.reftableClusters; i++) this.pendingFrees.push(oldCluster + i);
      this.host.meta.remove(oldCluster, this.reftableClusters);
      this.rtBuf = Buffer.from(table);
      this.rt = Refcounts.decode(this.rtBuf, cs);
      this.rtDirty.clear();
      this.reftableOffset = newOffset;
      this.reftableClusters = rc;
      for (let j = 0; j < k; j++) this.cache.insertClean((a + j) * cs, Buffer.from(area.subarray(j * cs, (j + 1) * cs)));
      this.host.meta.add(a, k, 'refcount block');
      this.host.meta.add(a + k, rc, 'refcount table');
      if ((a + k + rc) * cs > this.highWater) this.highWater = (a + k + rc) * cs;
    } finally {
      this.host.writeback.unlock();
    }
  }

  // ----------------------------------------------------------------- frees

  /** Queues a decrement for each cluster of [cluster, cluster + count). */
  free(cluster: number, count = 1): void {
    for (let i = 0; i < count; i++) this.pendingFrees.push(cluster + i);
  }

  /** Queues a decrement for every cluster touched by the byte range (compressed data). */
  freeBytes(offset: number, length: number): void {
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + length - 1) / this.clusterSize);
    this.free(first, last - first + 1);
  }

  get hasPendingFrees(): boolean {
    return this.pendingFrees.length > 0;
  }

  takePendingFrees(): number[] {
    const out = this.pendingFrees;
    this.pendingFrees = [];
    return out;
  }

  /** Puts frees back after a failed flush, so that they are retried. */
  restorePendingFrees(list: number[]): void {
    this.pendingFrees = list.concat(this.pendingFrees);
  }

  /** Applies decrements whose dropping L1/L2 change is durable. */
  async applyFrees(list: number[]): Promise<void> {
    await this.lock.lock();
    try {
      for (const c of list) {
        const index = Math.floor(c / this.entriesPerBlock);
        const off = index < this.rt.length ? this.rt[index]! : 0;
        if (off <= 0) continue;
        const e = await this.cache.acquire(off);
        try {
          const i = c - index * this.entriesPerBlock;
          const v = getRefcount(e.buf, i, this.order);
          if (v === 0) continue;
          setRefcount(e.buf, i, this.order, v - 1);
          this.cache.markDirty(e, this.byteOf(i), this.byteOf(i) + 8);
          if (v === 1 && c < this.freeHint) this.freeHint = c;
        } finally {
          this.cache.release(e);
        }
      }
    } finally {
      this.lock.unlock();
    }
  }

  // ------------------------------------------------------------- write-back

  /** Copies of the dirty reftable clusters (cleared here; restored by the caller on failure). */
  takeDirtyReftable(): Array<{ offset: number; data: Buffer; index: number }> {
    const out: Array<{ offset: number; data: Buffer; index: number }> = [];
    for (const i of this.rtDirty) {
      out.push({
        index: i,
        offset: this.reftableOffset + i * this.clusterSize,
        data: Buffer.from(this.rtBuf.subarray(i * this.clusterSize, (i + 1) * this.clusterSize)),
      });
    }
    this.rtDirty.clear();
    return out;
  }

  restoreDirtyReftable(indices: number[]): void {
    for (const i of indices) this.rtDirty.add(i);
  }

  get reftableDirty(): boolean {
    return this.rtDirty.size > 0;
  }

  /** Resets everything to a freshly laid-out image (make-empty). */
  reset(layout: { reftableOffset: number; reftable: Buffer; reftableClusters: number; fileLength: number; freeHint: number }): void {
    this.cache.clear();
    this.reftableOffset = layout.reftableOffset;
    this.reftableClusters = layout.reftableClusters;
    this.rtBuf = layout.reftable;
    this.rt = Refcounts.decode(layout.reftable, this.clusterSize);
    this.rtDirty.clear();
    this.pendingFrees = [];
    this.freeHint = layout.freeHint;
    this.highWater = layout.fileLength;
  }
}
