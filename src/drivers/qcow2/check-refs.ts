/**
 * The counting half of `qemu-img check`: every reference (header, L1/L2
 * tables, data and compressed clusters, snapshots, reftable, refblocks,
 * bitmaps) is counted into an in-memory table, compared with the refcounts
 * on disk (QEMU 7.2's classification and messages), and COPIED flags are
 * checked against refcount 1.
 */
import { BlockError } from '../../block/errors.js';
import {
  Autoclear, ClusterType, Ext, L2_COPIED_HI, compressedExtent, entryOffset, getRefcount, l2ReservedBits,
  l2Type, readU64, reftableReservedBits, setRefcount, MAX_L1_BYTES, l1ReservedBits,
} from './format.js';
import type { Qcow2Header } from './header.js';
import type { ImageFile } from './image-file.js';
import type { Qcow2CheckResult } from './check.js';

export const FIX_LEAKS = 1;
export const FIX_ERRORS = 2;

const hex = (n: number): string => n.toString(16);

export function newResult(): Qcow2CheckResult {
  return {
    corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0, imageEndOffset: 0,
    allocatedClusters: 0, totalClusters: 0, fragmentedClusters: 0, compressedClusters: 0, messages: [],
  };
}

/** An L1/L2 entry as a 16-digit-or-shorter hex string (QEMU prints PRIx64). */
function entryHex(buf: Buffer, pos: number): string {
  return buf.readBigUInt64BE(pos).toString(16);
}

export class Checker {
  readonly cs: number;
  readonly epb: number;
  private refs: Uint32Array;
  nbClusters: number;
  fileLength: number;
  private reftable: Buffer;

  get reftableBytes(): Buffer {
    return this.reftable;
  }
  private readonly blocks = new Map<number, Buffer>();
  private readonly dirtyBlocks = new Set<number>();

  constructor(readonly file: ImageFile, public h: Qcow2Header, readonly res: Qcow2CheckResult, readonly fix: number) {
    this.cs = 2 ** h.clusterBits;
    this.epb = (this.cs * 8) >> h.refcountOrder;
    this.fileLength = file.length;
    this.nbClusters = Math.ceil(this.fileLength / this.cs);
    this.refs = new Uint32Array(Math.max(this.nbClusters, 1));
    this.reftable = Buffer.alloc(0);
  }

  msg(text: string): void {
    this.res.messages.push(text);
  }

  async loadReftable(): Promise<void> {
    this.reftable = Buffer.alloc(this.h.refcountTableClusters * this.cs);
    await this.file.read(this.h.refcountTableOffset, this.reftable);
    this.blocks.clear();
  }

  private grow(k: number): void {
    if (k < this.refs.length) return;
    const next = new Uint32Array(Math.max(k + 1, Math.ceil(this.refs.length * 1.5)));
    next.set(this.refs);
    this.refs = next;
  }

  /** QEMU's qcow2_inc_refcounts_imrt. */
  inc(offset: number, size: number): void {
    if (size <= 0) return;
    if (offset + size - this.fileLength >= this.cs) {
      this.msg(`ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${hex(offset)} size 0x${hex(size)}`);
      this.res.corruptions++;
      return;
    }
    const first = Math.floor(offset / this.cs);
    const last = Math.floor((offset + size - 1) / this.cs);
    for (let k = first; k <= last; k++) {
      this.grow(k);
      this.refs[k] = this.refs[k]! + 1;
      if (this.refs[k] === 0) {
        this.msg(`ERROR: overflow cluster offset=0x${hex(k * this.cs)}`);
        this.res.corruptions++;
      }
    }
  }

  counted(k: number): number {
    return k < this.refs.length ? this.refs[k]! : 0;
  }

  setCounted(k: number, v: number): void {
    this.grow(k);
    this.refs[k] = v;
  }

  get countedLength(): number {
    return this.refs.length;
  }

  resetCounts(): void {
    this.refs = new Uint32Array(Math.max(this.nbClusters, 1));
  }

  private async readTable(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    if (offset < this.fileLength) await this.file.read(offset, buf);
    return buf;
  }

  // -------------------------------------------------------------- on-disk refcounts

  private async block(index: number): Promise<{ buf: Buffer; offset: number } | null> {
    if (index * 8 >= this.reftable.length) return null;
    const lo = this.reftable.readUInt32BE(index * 8 + 4);
    const off = entryOffset(this.reftable.readUInt32BE(index * 8), lo);
    if (off === 0) return null;
    // Like QEMU, reserved bits are masked off here (they are reported by
    // checkRefblocks); an unaligned refblock makes the refcount unreadable.
    if (off % this.cs !== 0) throw new BlockError('EIO', 'Input/output error');
    let buf = this.blocks.get(off);
    if (!buf) {
      buf = await this.readTable(off, this.cs);
      this.blocks.set(off, buf);
    }
    return { buf, offset: off };
  }

  async diskRefcount(k: number): Promise<number> {
    const index = Math.floor(k / this.epb);
    const b = await this.block(index);
    return b ? getRefcount(b.buf, k - index * this.epb, this.h.refcountOrder) : 0;
  }

  async setDiskRefcount(k: number, v: number): Promise<boolean> {
    const index = Math.floor(k / this.epb);
    const b = await this.block(index);
    if (!b) return false;
    setRefcount(b.buf, k - index * this.epb, this.h.refcountOrder, v);
    this.dirtyBlocks.add(b.offset);
    return true;
  }

  async writeBlocks(): Promise<void> {
    for (const off of this.dirtyBlocks) await this.file.write(off, this.blocks.get(off)!);
    this.dirtyBlocks.clear();
    await this.file.sync();
  }

  // --------------------------------------------------------------- counting

  async calculate(frag: boolean): Promise<{ rebuild: boolean }> {
    const h = this.h;
    this.inc(0, this.cs);
    await this.checkL1(h.l1TableOffset, h.l1Size, frag, true);
    const snapshots = await this.snapshots();
    for (const sn of snapshots) {
      if (sn.l1Offset % this.cs !== 0) {
        this.msg(`ERROR snapshot ${sn.id} (${sn.name}) l1_offset=${'0x' + hex(sn.l1Offset)}: L1 table is not cluster aligned; snapshot table entry corrupted`);
        this.res.corruptions++;
        continue;
      }
      if (sn.l1Size * 8 > MAX_L1_BYTES) {
        this.msg(`ERROR snapshot ${sn.id} (${sn.name}) l1_size=${'0x' + hex(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`);
        this.res.corruptions++;
        continue;
      }
      await this.checkL1(sn.l1Offset, sn.l1Size, false, false);
    }
    this.inc(h.snapshotsOffset, this.snapshotsSize);
    this.inc(h.refcountTableOffset, h.refcountTableClusters * this.cs);
    await this.bitmaps();
    return this.checkRefblocks();
  }

  private snapshotsSize = 0;

  private async snapshots(): Promise<Array<{ l1Offset: number; l1Size: number; id: string; name: string }>> {
    const out: Array<{ l1Offset: number; l1Size: number; id: string; name: string }> = [];
    this.snapshotsSize = 0;
    if (this.h.nbSnapshots === 0) return out;
    let pos = this.h.snapshotsOffset;
    for (let i = 0; i < this.h.nbSnapshots; i++) {
      const fixed = await this.readTable(pos, 40);
      const extra = fixed.readUInt32BE(36);
      const idLen = fixed.readUInt16BE(12);
      const nameLen = fixed.readUInt16BE(14);
      const strings = await this.readTable(pos + 40 + extra, idLen + nameLen);
      out.push({
        l1Offset: readU64(fixed, 0),
        l1Size: fixed.readUInt32BE(8),
        id: strings.toString('utf8', 0, idLen),
        name: strings.toString('utf8', idLen),
      });
      pos += 40 + extra + idLen + nameLen;
      pos = Math.ceil(pos / 8) * 8;
    }
    this.snapshotsSize = pos - this.h.snapshotsOffset;
    return out;
  }

  private async bitmaps(): Promise<void> {
    const ext = this.h.extensions.find((e) => e.type === Ext.BITMAPS);
    if (!ext || ext.data.length < 24 || !(this.h.autoclear & BigInt(Autoclear.BITMAPS))) return;
    const nb = ext.data.readUInt32BE(0);
    const dirSize = readU64(ext.data, 8);
    const dirOffset = readU64(ext.data, 16);
    if (nb === 0) return;
    this.inc(dirOffset, dirSize);
    const dir = await this.readTable(dirOffset, dirSize);
    let pos = 0;
    for (let i = 0; i < nb && pos + 24 <= dir.length; i++) {
      const tableOffset = readU64(dir, pos);
      const tableSize = dir.readUInt32BE(pos + 8);
      const nameSize = dir.readUInt16BE(pos + 14);
      const extra = dir.readUInt32BE(pos + 20);
      this.inc(tableOffset, tableSize * 8);
      const table = await this.readTable(tableOffset, tableSize * 8);
      for (let j = 0; j < tableSize; j++) {
        const off = entryOffset(table.readUInt32BE(j * 8), table.readUInt32BE(j * 8 + 4));
        if (off > 1) this.inc(off, this.cs);
      }
      pos += Math.ceil((24 + extra + nameSize) / 8) * 8;
    }
  }

  private async checkL1(l1Offset: number, l1Size: number, frag: boolean, active: boolean): Promise<void> {
    if (l1Size === 0) return;
    const bytes = l1Size * 8;
    this.inc(l1Offset, bytes);
    const l1 = await this.readTable(l1Offset, bytes);
    for (let i = 0; i < l1Size; i++) {
      const hi = l1.readUInt32BE(i * 8);
      const lo = l1.readUInt32BE(i * 8 + 4);
      if (hi === 0 && lo === 0) continue;
      if (l1ReservedBits(hi, lo)) {
        this.msg(`ERROR found L1 entry with reserved bits set: ${entryHex(l1, i * 8)}`);
        this.res.corruptions++;
      }
      const l2Offset = entryOffset(hi, lo);
      this.inc(l2Offset, this.cs);
      if (l2Offset % this.cs !== 0) {
        this.msg(`ERROR l2_offset=${hex(l2Offset)}: Table is not cluster aligned; L1 entry corrupted`);
        this.res.corruptions++;
      }
      await this.checkL2(l2Offset, frag, active);
    }
  }

  private nextContiguous = 0;

  private async checkL2(l2Offset: number, frag: boolean, active: boolean): Promise<void> {
    const cs = this.cs;
    const l2 = await this.readTable(l2Offset, cs);
    let dirty = false;
    for (let i = 0; i < cs / 8; i++) {
      let hi = l2.readUInt32BE(i * 8);
      const lo = l2.readUInt32BE(i * 8 + 4);
      const type = l2Type(hi, lo);
      if (type !== ClusterType.COMPRESSED && l2ReservedBits(hi, lo)) {
        this.msg(`ERROR found l2 entry with reserved bits set: ${entryHex(l2, i * 8)}`);
        this.res.corruptions++;
      }
      switch (type) {
        case ClusterType.COMPRESSED: {
          if (hi & L2_COPIED_HI) {
            const ext0 = compressedExtent(hi & ~L2_COPIED_HI, lo, this.h.clusterBits);
            this.msg(`ERROR: coffset=0x${hex(ext0.offset)}: copied flag must never be set for compressed clusters`);
            hi &= ~L2_COPIED_HI;
            this.res.corruptions++;
          }
          const ext = compressedExtent(hi, lo, this.h.clusterBits);
          this.inc(ext.offset, ext.length);
          if (frag) {
            this.res.allocatedClusters++;
            this.res.compressedClusters++;
            this.res.fragmentedClusters++;
          }
          break;
        }
        case ClusterType.ZERO_ALLOC:
        case ClusterType.NORMAL: {
          const offset = entryOffset(hi, lo);
          if (offset % cs !== 0) {
            this.res.corruptions++;
            if (type === ClusterType.ZERO_ALLOC) {
              const repair = (this.fix & FIX_ERRORS) !== 0 && active;
              this.msg(`${repair ? 'Repairing' : 'ERROR'} offset=${hex(offset)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`);
              if (repair) {
                l2.writeUInt32BE(0, i * 8);
                l2.writeUInt32BE(1, i * 8 + 4);
                dirty = true;
                this.res.corruptions--;
                this.res.corruptionsFixed++;
                continue;
              }
            } else {
              this.msg(`ERROR offset=${hex(offset)}: Data cluster is not properly aligned; L2 entry corrupted.`);
            }
          }
          if (frag) {
            this.res.allocatedClusters++;
            if (this.nextContiguous !== 0 && offset !== this.nextContiguous) this.res.fragmentedClusters++;
            this.nextContiguous = offset + cs;
          }
          this.inc(offset, cs);
          break;
        }
        default:
          break;
      }
    }
    if (dirty) {
      await this.file.write(l2Offset, l2);
      await this.file.sync();
    }
  }

  private async checkRefblocks(): Promise<{ rebuild: boolean }> {
    let rebuild = false;
    const n = this.reftable.length / 8;
    for (let i = 0; i < n; i++) {
      const hi = this.reftable.readUInt32BE(i * 8);
      const lo = this.reftable.readUInt32BE(i * 8 + 4);
      const offset = entryOffset(hi, lo) + (hi >>> 24) * 2 ** 56;
      const cluster = Math.floor(offset / this.cs);
      if (reftableReservedBits(lo)) {
        this.msg(`ERROR refcount table entry ${i} has reserved bits set`);
        this.res.corruptions++;
        rebuild = true;
        continue;
      }
      if (offset % this.cs !== 0) {
        this.msg(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
        this.res.corruptions++;
        rebuild = true;
        continue;
      }
      if (cluster >= this.nbClusters) {
        this.res.corruptions++;
        this.msg(`${this.fix & FIX_ERRORS ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
        rebuild = true;
        continue;
      }
      if (offset !== 0) {
        this.inc(offset, this.cs);
        if (this.counted(cluster) !== 1) {
          this.msg(`ERROR refcount block ${i} refcount=${this.counted(cluster)}`);
          this.res.corruptions++;
          rebuild = true;
        }
      }
    }
    return { rebuild };
  }

  // ------------------------------------------------------------ comparing

  /** QEMU's compare_refcounts; returns the highest cluster in use and whether a rebuild is needed. */
  async compare(fix: number): Promise<{ highest: number; rebuild: boolean }> {
    let highest = -1;
    let rebuild = false;
    const n = Math.max(this.nbClusters, 0);
    const limit = Math.max(n, this.countedLength);
    for (let k = 0; k < limit; k++) {
      if (k >= n && this.counted(k) === 0) continue;
      let disk: number;
      try {
        disk = await this.diskRefcount(k);
      } catch (err) {
        this.msg(`Can't get refcount for cluster ${k}: ${(err as Error).message}`);
        this.res.checkErrors++;
        continue;
      }
      const counted = this.counted(k);
      if (disk > 0 || counted > 0) highest = k;
      if (disk === counted) continue;
      let fixed: 'leak' | 'corruption' | null = null;
      if (disk === 0) rebuild = true;
      else if (disk > counted && fix & FIX_LEAKS) fixed = 'leak';
      else if (disk < counted && fix & FIX_ERRORS) fixed = 'corruption';
      const word = fixed ? 'Repairing' : disk < counted ? 'ERROR' : 'Leaked';
      this.msg(`${word} cluster ${k} refcount=${disk} reference=${counted}`);
      if (fixed && (await this.setDiskRefcount(k, counted))) {
        if (fixed === 'leak') this.res.leaksFixed++;
        else this.res.corruptionsFixed++;
        continue;
      }
      if (disk < counted) this.res.corruptions++;
      else this.res.leaks++;
    }
    if (this.dirtyBlocks.size > 0) await this.writeBlocks();
    return { highest, rebuild };
  }

  /** QEMU's check_oflag_copied (active L1 only). */
  async checkCopied(fix: number): Promise<void> {
    const h = this.h;
    if (h.l1Size === 0) return;
    const repair = (fix & FIX_ERRORS) !== 0;
    const l1 = await this.readTable(h.l1TableOffset, h.l1Size * 8);
    let l1Dirty = false;
    for (let i = 0; i < h.l1Size; i++) {
      const hi = l1.readUInt32BE(i * 8);
      const lo = l1.readUInt32BE(i * 8 + 4);
      const l2Offset = entryOffset(hi, lo);
      if (l2Offset === 0) continue;
      const rc = await this.diskRefcount(Math.floor(l2Offset / this.cs));
      if ((rc === 1) !== ((hi & L2_COPIED_HI) !== 0)) {
        this.res.corruptions++;
        this.msg(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${entryHex(l1, i * 8)} refcount=${rc}`);
        if (repair) {
          l1.writeUInt32BE((rc === 1 ? hi | L2_COPIED_HI : hi & ~L2_COPIED_HI) >>> 0, i * 8);
          l1Dirty = true;
          this.res.corruptions--;
          this.res.corruptionsFixed++;
        }
      }
      const l2 = await this.readTable(l2Offset, this.cs);
      let l2Dirty = 0;
      for (let j = 0; j < this.cs / 8; j++) {
        const eh = l2.readUInt32BE(j * 8);
        const el = l2.readUInt32BE(j * 8 + 4);
        const type = l2Type(eh, el);
        if (type !== ClusterType.NORMAL && type !== ClusterType.ZERO_ALLOC) continue;
        const drc = await this.diskRefcount(Math.floor(entryOffset(eh, el) / this.cs));
        if ((drc === 1) !== ((eh & L2_COPIED_HI) !== 0)) {
          this.res.corruptions++;
          this.msg(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${entryHex(l2, j * 8)} refcount=${drc}`);
          if (repair) {
            l2.writeUInt32BE((drc === 1 ? eh | L2_COPIED_HI : eh & ~L2_COPIED_HI) >>> 0, j * 8);
            l2Dirty++;
          }
        }
      }
      if (l2Dirty > 0) {
        await this.file.write(l2Offset, l2);
        this.res.corruptions -= l2Dirty;
        this.res.corruptionsFixed += l2Dirty;
      }
    }
    if (l1Dirty) await this.file.write(h.l1TableOffset, l1);
    if (repair) await this.file.sync();
  }
}
