/**
 * Rebuilding the refcount structure from counted references (repair of an
 * image whose refblocks are missing or damaged): new refblocks and a new
 * reftable go past the end of the file, are synced, then one header write
 * switches to them. The old structures are not counted, so they simply
 * become free space.
 */
import { BlockError } from '../../block/errors.js';
import { entryOffset, reftableReservedBits, setRefcount, writeEntry } from './format.js';
import type { Checker } from './check-refs.js';

/**
 * Writes a new refcount structure from the counted references (old
 * refcount structures excluded) past the end of the file, then switches
 * the header to it.
 */
export async function rebuildRefcountStructure(ck: Checker): Promise<void> {
  const cs = ck.cs;
  const epb = ck.epb;
  const h = ck.h;
  // The old reftable and refblocks are dropped: do not count them.
  const oldRt = h.refcountTableOffset / cs;
  for (let c = 0; c < h.refcountTableClusters; c++) {
    if (oldRt + c < ck.countedLength && ck.counted(oldRt + c) > 0) ck.setCounted(oldRt + c, ck.counted(oldRt + c) - 1);
  }
  const n = ck.reftableBytes.length / 8;
  for (let i = 0; i < n; i++) {
    const lo = ck.reftableBytes.readUInt32BE(i * 8 + 4);
    const off = entryOffset(ck.reftableBytes.readUInt32BE(i * 8), lo);
    if (off === 0 || reftableReservedBits(lo) || off % cs !== 0) continue;
    const c = off / cs;
    if (c < ck.countedLength && ck.counted(c) > 0) ck.setCounted(c, ck.counted(c) - 1);
  }
  let highest = -1;
  for (let k = ck.countedLength - 1; k >= 0; k--) if (ck.counted(k) > 0) { highest = k; break; }
  const a = Math.max(ck.nbClusters, highest + 1);
  let k = 1;
  let rc = 1;
  let ranges: number[] = [];
  for (let iter = 0; ; iter++) {
    if (iter > 64) throw new BlockError('EIO', 'could not lay out the rebuilt refcount structure');
    const set = new Set<number>();
    for (let c = 0; c < a; c++) if (ck.counted(c) > 0) set.add(Math.floor(c / epb));
    for (let c = a; c < a + k + rc; c++) set.add(Math.floor(c / epb));
    ranges = [...set].sort((x, y) => x - y);
    const nk = ranges.length;
    const entries = ranges[ranges.length - 1]! + 1;
    const nrc = Math.max(1, Math.ceil((entries * 8) / cs));
    if (nk === k && nrc === rc) break;
    k = nk;
    rc = nrc;
  }
  for (let c = a; c < a + k + rc; c++) ck.setCounted(c, 1);
  const area = Buffer.alloc((k + rc) * cs);
  const table = area.subarray(k * cs);
  ranges.forEach((r, j) => {
    const block = area.subarray(j * cs, (j + 1) * cs);
    for (let c = r * epb; c < (r + 1) * epb; c++) {
      const v = ck.counted(c);
      if (v > 0) setRefcount(block, c - r * epb, h.refcountOrder, v);
    }
    writeEntry(table, r, (a + j) * cs, 0, 0);
  });
  await ck.file.write(a * cs, area);
  await ck.file.sync();
  const hdr = Buffer.alloc(12);
  const newOffset = (a + k) * cs;
  hdr.writeUInt32BE(Math.floor(newOffset / 2 ** 32), 0);
  hdr.writeUInt32BE(newOffset % 2 ** 32, 4);
  hdr.writeUInt32BE(rc, 8);
  await ck.file.write(48, hdr);
  await ck.file.sync();
  h.refcountTableOffset = newOffset;
  h.refcountTableClusters = rc;
  ck.fileLength = ck.file.length;
  ck.nbClusters = Math.ceil(ck.fileLength / cs);
  await ck.loadReftable();
}
