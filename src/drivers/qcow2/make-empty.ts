/**
 * Emptying an image so that its backing shows through (QEMU's
 * bdrv_make_empty, run at every COLO checkpoint on the active and hidden
 * disks). The fast path rewrites the image to header | reftable | refblock |
 * L1 and truncates the file, as QEMU's make_completely_empty does, so its
 * cost does not depend on how much was buffered; cached metadata is dropped
 * unwritten since all of it is about to be discarded. The dirty bit covers
 * the window in which the refcounts on disk are wrong. Other images get a
 * full discard of every cluster. The caller has quiesced the node.
 */
import { Ext, Incompat, divRoundUp, setRefcount, writeEntry, writeU64 } from './format.js';
import { HeaderField } from './header.js';
import type { Qcow2Io } from './context.js';
import { discardLocked } from './zero.js';

export function canEmptyFast(io: Qcow2Io): boolean {
  const st = io.state;
  const h = st.header;
  const l1Clusters = divRoundUp(h.l1Size * 8, st.clusterSize);
  return h.version === 3
    && h.nbSnapshots === 0
    && !h.extensions.some((e) => e.type === Ext.BITMAPS || e.type === Ext.CRYPTO || e.type === Ext.DATA_FILE)
    && 3 + l1Clusters <= st.refcounts.entriesPerBlock;
}

export async function makeEmptyLocked(io: Qcow2Io): Promise<void> {
  const st = io.state;
  st.checkWritable();
  if (!canEmptyFast(io) || !(await fastEmpty(io))) {
    await discardLocked(io, 0, io.size, true);
    await st.flushAll();
  }
  io.compressed.clear();
}

async function fastEmpty(io: Qcow2Io): Promise<boolean> {
  const st = io.state;
  const cs = st.clusterSize;
  const h = st.header;
  const l1Clusters = divRoundUp(h.l1Size * 8, cs);
  const total = 3 + l1Clusters;
  // Lock order everywhere: refcount mutex, then write-back mutex.
  await st.refcounts.lock.lock();
  await st.writeback.lock();
  try {
    await st.setIncompatibleBit(Incompat.DIRTY, true);
  } catch (err) {
    st.writeback.unlock();
    st.refcounts.lock.unlock();
    throw err;
  }
  try {
    // Unless clusters 1..2+L1 already hold only the reftable, a refblock and
    // the L1, drop every reference first so that nothing points into what
    // is about to be overwritten.
    let standard = true;
    for (let c = 1; c < total; c++) {
      const kind = st.meta.kindOf(c);
      if (kind !== 'refcount table' && kind !== 'refcount block' && kind !== 'active L1 table') standard = false;
    }
    if (!standard) {
      await st.file.write(h.l1TableOffset, Buffer.alloc(h.l1Size * 8));
      await st.file.sync();
    }

    const area = Buffer.alloc((2 + l1Clusters) * cs);
    writeEntry(area, 0, 2 * cs, 0, 0);
    const refblock = area.subarray(cs, 2 * cs);
    for (let c = 0; c < total; c++) setRefcount(refblock, c, h.refcountOrder, 1);
    await st.file.write(cs, area);
    await st.file.sync();

    // One write switches to the new tables and clears the dirty bit.
    const fields = Buffer.alloc(40);
    writeU64(fields, 0, 3 * cs);
    writeU64(fields, 8, cs);
    fields.writeUInt32BE(1, 16);
    fields.writeUInt32BE(0, 20);
    writeU64(fields, 24, 0);
    const incompat = h.incompatible & ~BigInt(Incompat.DIRTY);
    fields.writeBigUInt64BE(incompat, 32);
    await st.writeHeaderSync(HeaderField.L1_TABLE_OFFSET, fields);
    h.incompatible = incompat;
    h.l1TableOffset = 3 * cs;
    h.refcountTableOffset = cs;
    h.refcountTableClusters = 1;
    const fileLength = total * cs;
    // Kept, the old clusters are free space that the allocator reuses (the write path fills what a reused cluster needs).
    if (!io.runtime.emptyKeepsSpace) await st.file.truncate(fileLength);

    st.l2.reset(3 * cs);
    st.refcounts.reset({
      reftableOffset: cs,
      reftable: Buffer.from(area.subarray(0, cs)),
      reftableClusters: 1,
      fileLength: Math.max(fileLength, st.file.length),
      freeHint: total,
    });
    st.refcounts.cache.insertClean(2 * cs, Buffer.from(refblock));
    st.meta.clear();
    st.meta.add(0, 1, 'qcow2_header');
    st.meta.add(1, 1, 'refcount table');
    st.meta.add(2, 1, 'refcount block');
    st.meta.add(3, l1Clusters, 'active L1 table');
    st.unsyncedWrites = false;
    return true;
  } catch (err) {
    // The dirty bit is set and the tables are half rewritten: the next open repairs the image.
    throw st.fail('emptying the image failed half-way', err);
  } finally {
    st.writeback.unlock();
    st.refcounts.lock.unlock();
  }
}
