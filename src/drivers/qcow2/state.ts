/**
 * An open qcow2 image's metadata: header, refcounts and L1/L2 mapping, and
 * the one place that decides in which order cached metadata reaches the disk.
 *
 * Write-back order (the crash-safety argument, QEMU's cache dependencies made
 * explicit): at a flush or an eviction, the L2 tables and L1 sectors to write
 * are copied first (time t0). Then every dirty refblock is written and the
 * file synced, which makes durable both the refcount increments and the guest
 * data of every allocation linked before t0; then reftable entries for new
 * refblocks (synced); then the L2 copies (synced); then the L1 copies
 * (synced). Frees queued before t0 are applied only after that, so a refcount
 * never drops while a durable pointer may still reference the cluster. A crash
 * anywhere leaves at most leaked clusters.
 */
import { BlockError } from '../../block/errors.js';
import { rootLogger, type Logger } from '../../util/log.js';
import { Ext, Incompat, divRoundUp, entryOffset, readHi, readLo, l1ReservedBits, MAX_L1_BYTES, MAX_REFTABLE_BYTES } from './format.js';
import { HeaderField, checkOpenable, parseFixedHeader, parseHeader, type Qcow2Header } from './header.js';
import type { ImageFile } from './image-file.js';
import { L2Tables, type L2Host } from './l2.js';
import { MetadataMap } from './metadata-map.js';
import { Mutex } from './mutex.js';
import { Refcounts, type RefcountHost } from './refcounts.js';
import type { CachedTable } from './table-cache.js';

export interface CacheSizes {
  l2Entries: number;
  refcountEntries: number;
}

interface Copy {
  offset: number;
  data: Buffer;
}

/** Reads cluster 0 and parses the header (no checks of the tables). */
export async function readHeader(file: ImageFile): Promise<Qcow2Header> {
  const fileLength = file.length;
  const first = Buffer.alloc(Math.min(fileLength, 112));
  await file.read(0, first);
  const fixed = parseFixedHeader(first);
  const cs = 2 ** fixed.clusterBits;
  const cluster0 = Buffer.alloc(Math.min(cs, fileLength));
  await file.read(0, cluster0);
  if (cluster0.length < fixed.headerLength) throw new BlockError('EINVAL', 'qcow2 header is truncated');
  return parseHeader(cluster0);
}

/** Structural checks of the table locations against the file; throws QEMU-like messages. */
export function checkTables(h: Qcow2Header, fileLength: number): void {
  const cs = 2 ** h.clusterBits;
  const l2Entries = cs / 8;
  const needL1 = Math.ceil(h.size / (cs * l2Entries));
  if (h.l1Size * 8 > MAX_L1_BYTES) throw new BlockError('EFBIG', 'Active L1 table too large');
  if (h.l1Size < needL1) throw new BlockError('EINVAL', 'L1 table is too small');
  if (h.l1Size > 0) {
    if (h.l1TableOffset % cs !== 0 || h.l1TableOffset === 0) throw new BlockError('EINVAL', 'Invalid L1 table offset');
    if (h.l1TableOffset + h.l1Size * 8 > fileLength) {
      throw new BlockError('EINVAL', `L1 table (offset 0x${h.l1TableOffset.toString(16)}, ${h.l1Size} entries) lies past the end of the image file`);
    }
  }
  if (h.refcountTableClusters === 0) throw new BlockError('EINVAL', 'Image does not contain a reference count table');
  if (h.refcountTableClusters * cs > MAX_REFTABLE_BYTES) throw new BlockError('EINVAL', 'Reference count table too large');
  if (h.refcountTableOffset % cs !== 0 || h.refcountTableOffset === 0) throw new BlockError('EINVAL', 'Invalid reference count table offset');
  if (h.refcountTableOffset >= fileLength) {
    throw new BlockError('EINVAL', `Reference count table (offset 0x${h.refcountTableOffset.toString(16)}) lies past the end of the image file`);
  }
  const l1First = h.l1TableOffset / cs;
  const l1Count = divRoundUp(h.l1Size * 8, cs);
  const rtFirst = h.refcountTableOffset / cs;
  if (h.l1Size > 0 && l1First < rtFirst + h.refcountTableClusters && rtFirst < l1First + l1Count) {
    throw new BlockError('EINVAL', 'The L1 table and the reference count table overlap');
  }
}

export class Qcow2State implements RefcountHost, L2Host {
  readonly meta = new MetadataMap();
  readonly writeback = new Mutex();
  readonly refcounts: Refcounts;
  readonly l2: L2Tables;
  readonly clusterSize: number;
  readonly clusterBits: number;
  readonly log: Logger;
  /** Set once a corruption was detected: writes are refused from then on. */
  broken = false;
  /** Something (guest data or metadata) reached the file since the last sync started. */
  unsyncedWrites = false;
  private flushRunning: Promise<void> | null = null;
  private flushQueued: Promise<void> | null = null;
  private markingCorrupt: Promise<void> | null = null;

  private constructor(
    readonly file: ImageFile,
    public header: Qcow2Header,
    readonly readOnly: boolean,
    l1: Buffer,
    reftable: Buffer,
    caches: CacheSizes,
  ) {
    this.clusterBits = header.clusterBits;
    this.clusterSize = 2 ** header.clusterBits;
    this.log = rootLogger.child({ component: 'qcow2', image: file.path });
    this.refcounts = new Refcounts(this, {
      clusterBits: header.clusterBits,
      order: header.refcountOrder,
      reftableOffset: header.refcountTableOffset,
      reftableClusters: header.refcountTableClusters,
      reftable,
      cacheEntries: caches.refcountEntries,
      fileLength: file.length,
    });
    this.l2 = new L2Tables(this, header.clusterBits, header.l1TableOffset, header.l1Size, l1, caches.l2Entries);
    this.buildMetadataMap();
  }

  /** Opens the metadata of an image whose header passed `checkOpenable` (and was repaired if dirty). */
  static async open(file: ImageFile, header: Qcow2Header, readOnly: boolean, caches: CacheSizes): Promise<Qcow2State> {
    checkOpenable(header, readOnly);
    checkTables(header, file.length);
    const cs = 2 ** header.clusterBits;
    const l1 = Buffer.alloc(header.l1Size * 8);
    if (l1.length > 0) await file.read(header.l1TableOffset, l1);
    const reftable = Buffer.alloc(header.refcountTableClusters * cs);
    await file.read(header.refcountTableOffset, reftable);
    const state = new Qcow2State(file, header, readOnly, l1, reftable, caches);
    if (!readOnly && header.version === 3 && header.autoclear !== 0n) {
      if (header.extensions.some((e) => e.type === Ext.BITMAPS)) {
        state.log.warn('qcow2_bitmaps_dropped', {
          message: 'persistent dirty bitmaps are not maintained by colo-blk; QEMU will consider them inconsistent and their clusters leaked',
        });
      }
      // We maintain no autoclear feature (bitmaps): clearing the bits tells
      // QEMU that whatever they describe may be stale after our writes.
      header.autoclear = 0n;
      await state.writeHeaderSync(HeaderField.AUTOCLEAR, Buffer.alloc(8));
    }
    return state;
  }

  private buildMetadataMap(): void {
    const h = this.header;
    const cs = this.clusterSize;
    this.meta.add(0, 1, 'qcow2_header');
    if (h.l1Size > 0) this.meta.add(h.l1TableOffset / cs, divRoundUp(h.l1Size * 8, cs), 'active L1 table');
    this.meta.add(h.refcountTableOffset / cs, h.refcountTableClusters, 'refcount table');
    for (const { index, offset } of this.refcounts.blockOffsets()) {
      const kind = this.meta.kindOf(offset / cs);
      if (kind) this.refcounts.invalidate(index);
      else this.meta.add(offset / cs, 1, 'refcount block');
    }
    for (let i = 0; i < h.l1Size; i++) {
      const hi = readHi(this.l2.l1, i);
      const lo = readLo(this.l2.l1, i);
      if ((hi === 0 && lo === 0) || l1ReservedBits(hi, lo)) continue;
      const off = entryOffset(hi, lo);
      if (off === 0 || off % cs !== 0) continue;
      const kind = this.meta.kindOf(off / cs);
      if (kind) this.l2.markBad(i, `L2 table at 0x${off.toString(16)} (L1 index ${i}) overlaps the ${kind}`);
      else this.meta.add(off / cs, 1, 'active L2 table');
    }
  }

  get virtualSize(): number {
    return this.header.size;
  }

  // ------------------------------------------------------------ corruption

  /**
   * Reports metadata damage: logs it, marks the image corrupt on disk (as
   * QEMU does) when it is writable, and returns the error for the request.
   */
  corruption(message: string): BlockError {
    const text = `qcow2 image ${this.file.path} is corrupt: ${message}`;
    if (!this.broken) {
      this.broken = true;
      this.log.error('qcow2_corruption', { message });
      if (!this.readOnly && this.header.version === 3) {
        this.header.incompatible |= BigInt(Incompat.CORRUPT);
        const bits = Buffer.alloc(8);
        bits.writeBigUInt64BE(this.header.incompatible);
        this.markingCorrupt = this.writeHeaderSync(HeaderField.INCOMPATIBLE, bits).catch((err: unknown) => {
          this.log.error('qcow2_mark_corrupt_failed', { error: err });
        });
      }
    }
    return new BlockError('EIO', text);
  }

  /** Why writes are refused, once they are. */
  private brokenReason = 'it is corrupt';

  /**
   * Stops writes after a metadata update failed half-way (the on-disk state
   * is no longer what the caches describe; reopening repairs it).
   */
  fail(reason: string, cause: unknown): BlockError {
    if (!this.broken) {
      this.broken = true;
      this.brokenReason = reason;
      this.log.error('qcow2_metadata_update_failed', { reason, error: cause });
    }
    return BlockError.from(cause, `qcow2 image ${this.file.path}: ${reason}`);
  }

  /** Refuses writes once the image is known to be damaged. */
  checkWritable(): void {
    if (this.broken) {
      throw new BlockError('EIO', `qcow2 image ${this.file.path}: writes are refused because ${this.brokenReason} (reopen it, or run qemu-img check -r all)`);
    }
  }

  // ------------------------------------------------------------ header I/O

  async writeHeaderSync(offset: number, bytes: Buffer): Promise<void> {
    await this.file.write(offset, bytes);
    await this.file.sync();
  }

  async setIncompatibleBit(bit: number, on: boolean): Promise<void> {
    const b = BigInt(bit);
    this.header.incompatible = on ? this.header.incompatible | b : this.header.incompatible & ~b;
    const bytes = Buffer.alloc(8);
    bytes.writeBigUInt64BE(this.header.incompatible);
    await this.writeHeaderSync(HeaderField.INCOMPATIBLE, bytes);
  }

  // ------------------------------------------------------------ write-back

  private async writeCopies(copies: Copy[]): Promise<void> {
    if (copies.length === 0) return;
    copies.sort((a, b) => a.offset - b.offset);
    const jobs: Array<Promise<void>> = [];
    let i = 0;
    while (i < copies.length) {
      const group = [copies[i]!.data];
      const start = copies[i]!.offset;
      let end = start + copies[i]!.data.length;
      i++;
      while (i < copies.length && copies[i]!.offset === end && group.length < 64) {
        group.push(copies[i]!.data);
        end += copies[i]!.data.length;
        i++;
      }
      jobs.push(this.file.writev(start, group));
    }
    try {
      await Promise.all(jobs);
    } finally {
      this.unsyncedWrites = true;
    }
  }

  private async sync(): Promise<void> {
    this.unsyncedWrites = false;
    await this.file.sync();
  }

  /** Refblocks, sync, reftable entries, sync. The caller holds `writeback`. */
  async writeRefcountsLocked(): Promise<void> {
    const cache = this.refcounts.cache;
    const copies = cache.dirtyEntries().map((e) => cache.dirtyCopy(e));
    const reftable = this.refcounts.takeDirtyReftable();
    try {
      await this.writeCopies(copies);
      for (const c of copies) cache.markWritten(c);
      await this.sync();
      if (reftable.length > 0) {
        await this.writeCopies(reftable);
        await this.sync();
      }
    } catch (err) {
      this.refcounts.restoreDirtyReftable(reftable.map((r) => r.index));
      throw err;
    }
  }

  async writeBackRefblocks(entries: CachedTable[]): Promise<void> {
    await this.writeback.lock();
    try {
      const copies = entries.map((e) => this.refcounts.cache.dirtyCopy(e));
      await this.writeCopies(copies);
      for (const c of copies) this.refcounts.cache.markWritten(c);
    } finally {
      this.writeback.unlock();
    }
  }

  async writeBackL2(entries: CachedTable[]): Promise<void> {
    await this.writeback.lock();
    try {
      const copies = entries.map((e) => this.l2.cache.dirtyCopy(e));
      await this.writeRefcountsLocked();
      await this.writeCopies(copies);
      for (const c of copies) this.l2.cache.markWritten(c);
    } finally {
      this.writeback.unlock();
    }
  }

  private get metadataDirty(): boolean {
    return this.refcounts.hasPendingFrees || this.refcounts.reftableDirty || this.l2.l1IsDirty
      || this.refcounts.cache.hasDirty() || this.l2.cache.hasDirty();
  }

  get needsFlush(): boolean {
    return this.unsyncedWrites || this.metadataDirty;
  }

  /**
   * Makes everything completed before the call durable. Concurrent callers
   * share runs: one that arrives during a run waits for the next one.
   */
  flush(): Promise<void> {
    if (!this.flushRunning) {
      this.flushRunning = this.flushOnce().finally(() => { this.flushRunning = null; });
      return this.flushRunning;
    }
    if (!this.flushQueued) {
      this.flushQueued = this.flushRunning.catch(() => undefined).then(() => {
        this.flushQueued = null;
        return this.flush();
      });
    }
    return this.flushQueued;
  }

  private async flushOnce(): Promise<void> {
    if (this.readOnly) return;
    if (this.markingCorrupt) await this.markingCorrupt;
    let frees: number[] = [];
    // Checked under the lock: an eviction may be writing metadata right now.
    await this.writeback.lock();
    if (!this.needsFlush) {
      this.writeback.unlock();
      return;
    }
    if (!this.metadataDirty) {
      // Only guest data (or already written metadata) to make durable.
      try {
        await this.sync();
      } finally {
        this.writeback.unlock();
      }
      return;
    }
    const l1 = this.l2.takeDirtyL1();
    try {
      const l2Copies = this.l2.cache.dirtyEntries().map((e) => this.l2.cache.dirtyCopy(e));
      frees = this.refcounts.takePendingFrees();
      await this.writeRefcountsLocked();
      if (l2Copies.length > 0) {
        await this.writeCopies(l2Copies);
        for (const c of l2Copies) this.l2.cache.markWritten(c);
        await this.sync();
      }
      if (l1.length > 0) {
        await this.writeCopies(l1);
        await this.sync();
      }
    } catch (err) {
      this.l2.restoreDirtyL1(l1.map((c) => c.sector));
      this.refcounts.restorePendingFrees(frees);
      throw err;
    } finally {
      this.writeback.unlock();
    }
    if (frees.length > 0) await this.refcounts.applyFrees(frees);
  }

  /** Flushes until nothing is dirty (applied frees dirty refblocks again). */
  async flushAll(): Promise<void> {
    for (let i = 0; i < 4 && (this.needsFlush || this.flushRunning); i++) await this.flush();
  }

  async close(): Promise<void> {
    if (!this.readOnly) await this.flushAll();
    if (this.markingCorrupt) await this.markingCorrupt;
  }
}
