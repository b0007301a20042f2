/**
 * write-zeroes and discard, with QEMU's qcow2 semantics (v3):
 * - write-zeroes of whole clusters sets the ZERO flag; with MAY_UNMAP the
 *   host cluster is released (entry 0x1), without it an allocated cluster is
 *   kept (ZERO_ALLOC); compressed clusters are always released. Partial
 *   clusters are written as real zeroes unless they already read as zero.
 * - discard of whole clusters leaves zero clusters where a backing file or an
 *   allocation could otherwise show through, unallocated entries elsewhere;
 *   partial clusters are ignored (except the tail cluster at an unaligned end).
 * - full discard (make-empty fallback) leaves every entry unallocated.
 * The caller holds an exclusive range lock on the guest clusters.
 */
import { BlockError } from '../../block/errors.js';
import { Req } from '../../block/node.js';
import { ClusterType, L2_ZERO_LO, l2Type, readHi, readLo } from './format.js';
import { backingIsZero, type Qcow2Io } from './context.js';
import type { CachedTable } from './table-cache.js';
import { freeOld, writeLocked } from './write.js';

export type ZeroMode = 'zero' | 'zero-unmap' | 'discard' | 'full-discard';

const ZERO_CHUNK = Buffer.alloc(1 << 20);

/** The entry a cluster gets, or null to leave it as it is. */
function newEntry(io: Qcow2Io, mode: ZeroMode, hi: number, lo: number): { hi: number; lo: number; free: boolean } | null {
  const type = l2Type(hi, lo);
  const v3 = io.state.header.version === 3;
  const allocated = type === ClusterType.NORMAL || type === ClusterType.ZERO_ALLOC || type === ClusterType.COMPRESSED;
  switch (mode) {
    case 'full-discard':
      return type === ClusterType.UNALLOCATED ? null : { hi: 0, lo: 0, free: allocated };
    case 'discard': {
      if (io.runtime.discardNoUnref && (type === ClusterType.NORMAL || type === ClusterType.ZERO_ALLOC) && v3) {
        return type === ClusterType.ZERO_ALLOC ? null : { hi, lo: lo | L2_ZERO_LO, free: false };
      }
      const zero = v3 && (io.backing !== null || allocated);
      if (zero) return type === ClusterType.ZERO_PLAIN ? null : { hi: 0, lo: L2_ZERO_LO, free: allocated };
      return type === ClusterType.UNALLOCATED ? null : { hi: 0, lo: 0, free: allocated };
    }
    case 'zero':
    case 'zero-unmap': {
      const unmap = type === ClusterType.COMPRESSED || (mode === 'zero-unmap' && allocated);
      if (unmap) return { hi: 0, lo: L2_ZERO_LO, free: true };
      if (type === ClusterType.NORMAL) return { hi, lo: lo | L2_ZERO_LO, free: false };
      if (type === ClusterType.ZERO_ALLOC || type === ClusterType.ZERO_PLAIN) return null;
      return { hi: 0, lo: L2_ZERO_LO, free: false };
    }
  }
}

/** Applies `mode` to whole guest clusters [first, first + count). */
export async function zeroClusters(io: Qcow2Io, first: number, count: number, mode: ZeroMode): Promise<void> {
  const st = io.state;
  const l2e = st.l2.l2Entries;
  let c = first;
  const end = first + count;
  while (c < end) {
    const l1i = Math.floor(c / l2e);
    const i0 = c - l1i * l2e;
    const n = Math.min(l2e - i0, end - c);
    const existing = st.l2.tableOffset(l1i);
    if (existing === 0) {
      // No table: every entry is unallocated. Only modes that write zero flags need one.
      if (newEntry(io, mode, 0, 0) === null) {
        c += n;
        continue;
      }
    }
    let table: CachedTable;
    if (existing !== 0 && st.l2.isCopied(l1i)) {
      const got = st.l2.cache.acquire(existing);
      table = got instanceof Promise ? await got : got;
    } else {
      table = await st.l2.acquireForWrite(l1i);
    }
    try {
      let first = -1;
      let last = -1;
      for (let i = i0; i < i0 + n; i++) {
        const hi = readHi(table.buf, i);
        const lo = readLo(table.buf, i);
        const next = newEntry(io, mode, hi, lo);
        if (!next) continue;
        if (next.free) freeOld(io, hi, lo);
        table.buf.writeUInt32BE(next.hi >>> 0, i * 8);
        table.buf.writeUInt32BE(next.lo >>> 0, i * 8 + 4);
        if (first < 0) first = i;
        last = i;
      }
      if (first >= 0) st.l2.cache.markDirty(table, first * 8, last * 8 + 8);
    } finally {
      st.l2.cache.release(table);
    }
    c += n;
  }
}

/** Whether guest cluster `c` already reads as zeroes without looking at data. */
async function readsAsZero(io: Qcow2Io, c: number): Promise<boolean> {
  const st = io.state;
  const l2e = st.l2.l2Entries;
  const l1i = Math.floor(c / l2e);
  const got = st.l2.acquire(l1i);
  const table = got instanceof Promise ? await got : got;
  if (!table) return backingIsZero(io, c * st.clusterSize);
  try {
    const i = c - l1i * l2e;
    const type = l2Type(readHi(table.buf, i), readLo(table.buf, i));
    if (type === ClusterType.ZERO_PLAIN || type === ClusterType.ZERO_ALLOC) return true;
    return type === ClusterType.UNALLOCATED && backingIsZero(io, c * st.clusterSize);
  } finally {
    st.l2.cache.release(table);
  }
}

async function writeRealZeroes(io: Qcow2Io, offset: number, length: number, flags: number): Promise<void> {
  if (flags & Req.NO_FALLBACK) throw new BlockError('ENOTSUP', 'qcow2 cannot zero a partial cluster without writing data');
  for (let done = 0; done < length;) {
    const n = Math.min(ZERO_CHUNK.length, length - done);
    await writeLocked(io, offset + done, ZERO_CHUNK.subarray(0, n));
    done += n;
  }
}

export async function writeZeroesLocked(io: Qcow2Io, offset: number, length: number, flags: number): Promise<void> {
  const st = io.state;
  const cs = st.clusterSize;
  if (st.header.version !== 3) {
    await writeRealZeroes(io, offset, length, flags);
    return;
  }
  const end = offset + length;
  const mode: ZeroMode = flags & Req.MAY_UNMAP ? 'zero-unmap' : 'zero';
  let pos = offset;
  while (pos < end) {
    const c = Math.floor(pos / cs);
    if (pos === c * cs) {
      let k = c;
      while ((k + 1) * cs <= end) k++;
      // The tail cluster at an unaligned end of the image counts as whole.
      if (k * cs < end && end === io.size) k++;
      if (k > c) {
        await zeroClusters(io, c, k - c, mode);
        pos = Math.min(k * cs, end);
        continue;
      }
    }
    const pieceEnd = Math.min(end, (c + 1) * cs);
    if (!(await readsAsZero(io, c))) await writeRealZeroes(io, pos, pieceEnd - pos, flags);
    pos = pieceEnd;
  }
}

export async function discardLocked(io: Qcow2Io, offset: number, length: number, full = false): Promise<void> {
  const cs = io.state.clusterSize;
  const end = offset + length;
  const first = Math.ceil(offset / cs);
  const last = end === io.size ? Math.ceil(end / cs) : Math.floor(end / cs);
  if (last > first) await zeroClusters(io, first, last - first, full ? 'full-discard' : 'discard');
}
