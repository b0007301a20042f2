/**
 * The write path. Clusters that are allocated and exclusively ours (NORMAL
 * with COPIED) are overwritten in place, contiguous ones in one write. Others
 * get new host clusters, as many contiguous ones as the allocator finds in one
 * go: the untouched head and tail of the run are filled from what reads see
 * there (the COW), unless they are zeroes landing in never-written file space,
 * and the whole run goes out in one vectored write. The L2 entries are linked
 * only after the data is written; the write-back order in state.ts makes them
 * durable only after the data and the refcounts. The caller holds an
 * exclusive range lock on the guest clusters.
 */
import {
  ClusterType, L2_COPIED_HI, compressedExtent, entryOffset, l2Type, readHi, readLo, writeEntry,
} from './format.js';
import { backingIsZero, hostCluster, isAllZero, readBacking, type Qcow2Io } from './context.js';
import type { CachedTable } from './table-cache.js';

export async function writeLocked(io: Qcow2Io, offset: number, buf: Buffer): Promise<void> {
  const st = io.state;
  const cs = st.clusterSize;
  const l2e = st.l2.l2Entries;
  const end = offset + buf.length;
  let pos = offset;
  while (pos < end) {
    const l1i = Math.floor(Math.floor(pos / cs) / l2e);
    const off = st.l2.tableOffset(l1i);
    let table: CachedTable;
    if (off !== 0 && st.l2.isCopied(l1i)) {
      const got = st.l2.cache.acquire(off);
      table = got instanceof Promise ? await got : got;
    } else {
      table = await st.l2.acquireForWrite(l1i);
    }
    try {
      pos = await writeInTable(io, table, l1i, pos, offset, buf, end);
    } finally {
      st.l2.cache.release(table);
    }
  }
  st.unsyncedWrites = true;
}

/**
 * The host offset of guest cluster `c` when a write can go in place without
 * waiting for anything (table cached, NORMAL and COPIED), else -1.
 */
export function inPlaceHost(io: Qcow2Io, c: number): number {
  const st = io.state;
  const l2e = st.l2.l2Entries;
  const l1i = Math.floor(c / l2e);
  const off = st.l2.tableOffset(l1i);
  if (off === 0 || !st.l2.isCopied(l1i)) return -1;
  const t = st.l2.cache.peek(off);
  if (!t) return -1;
  const i = c - l1i * l2e;
  const hi = readHi(t.buf, i);
  const lo = readLo(t.buf, i);
  if (!(hi & L2_COPIED_HI) || l2Type(hi, lo) !== ClusterType.NORMAL) return -1;
  return hostCluster(io, hi, lo, c);
}

function needsAllocation(hi: number, lo: number): boolean {
  const t = l2Type(hi, lo);
  if (hi & L2_COPIED_HI) return t !== ClusterType.NORMAL && t !== ClusterType.ZERO_ALLOC;
  return true;
}

async function writeInTable(
  io: Qcow2Io, t: CachedTable, l1i: number, start: number, offset: number, buf: Buffer, end: number,
): Promise<number> {
  const st = io.state;
  const cs = st.clusterSize;
  const l2e = st.l2.l2Entries;
  let pos = start;
  let i = Math.floor(pos / cs) - l1i * l2e;
  while (pos < end && i < l2e) {
    const guestCluster = l1i * l2e + i;
    const inC = pos - guestCluster * cs;
    const hi = readHi(t.buf, i);
    const lo = readLo(t.buf, i);
    const type = l2Type(hi, lo);

    if (type === ClusterType.NORMAL && hi & L2_COPIED_HI) {
      const host = hostCluster(io, hi, lo, guestCluster);
      let n = 1;
      while (i + n < l2e && (guestCluster + n) * cs < end) {
        const nh = readHi(t.buf, i + n);
        const nl = readLo(t.buf, i + n);
        if (l2Type(nh, nl) !== ClusterType.NORMAL || !(nh & L2_COPIED_HI) || entryOffset(nh, nl) !== host + n * cs) break;
        hostCluster(io, nh, nl, guestCluster + n);
        n++;
      }
      const len = Math.min(n * cs - inC, end - pos);
      await st.file.write(host + inC, buf.subarray(pos - offset, pos - offset + len));
      pos += len;
      i += n;
      continue;
    }

    if (type === ClusterType.ZERO_ALLOC && hi & L2_COPIED_HI) {
      // Preallocated zero cluster: reuse it, writing zeroes around the data.
      const host = hostCluster(io, hi, lo, guestCluster);
      const len = Math.min(cs - inC, end - pos);
      const full = Buffer.alloc(cs);
      buf.copy(full, inC, pos - offset, pos - offset + len);
      await st.file.write(host, full);
      writeEntry(t.buf, i, host, L2_COPIED_HI, 0);
      st.l2.cache.markDirty(t, i * 8, i * 8 + 8);
      pos += len;
      i++;
      continue;
    }

    let want = 1;
    while (i + want < l2e && (guestCluster + want) * cs < end && needsAllocation(readHi(t.buf, i + want), readLo(t.buf, i + want))) want++;
    const alloc = await st.refcounts.allocate(want);
    const count = alloc.count;
    const host = alloc.start * cs;
    const runEnd = Math.min(end, (guestCluster + count) * cs);
    const parts: Buffer[] = [];
    let writeAt = host;
    try {
      const virginFirst = alloc.start >= alloc.virginFrom;
      const virginLast = alloc.start + count - 1 >= alloc.virginFrom;
      if (inC > 0 && !(virginFirst && cowIsZero(io, t, i, guestCluster))) {
        const head = Buffer.allocUnsafe(inC);
        const zero = await cowFill(io, t, i, guestCluster, 0, head);
        if (zero && virginFirst) writeAt = host + inC;
        else parts.push(head);
      } else if (inC > 0) {
        writeAt = host + inC;
      }
      parts.push(buf.subarray(pos - offset, runEnd - offset));
      const last = guestCluster + count - 1;
      const tailFrom = runEnd - last * cs;
      if (tailFrom < cs && !(virginLast && cowIsZero(io, t, i + count - 1, last))) {
        const tail = Buffer.allocUnsafe(cs - tailFrom);
        const zero = await cowFill(io, t, i + count - 1, last, tailFrom, tail);
        if (!zero || !virginLast) parts.push(tail);
      }
      await st.file.writev(writeAt, parts);
    } catch (err) {
      // Nothing points at the new clusters yet: give them back.
      st.refcounts.free(alloc.start, count);
      throw err;
    }
    for (let k = 0; k < count; k++) {
      freeOld(io, readHi(t.buf, i + k), readLo(t.buf, i + k));
      writeEntry(t.buf, i + k, host + k * cs, L2_COPIED_HI, 0);
    }
    st.l2.cache.markDirty(t, i * 8, (i + count) * 8);
    pos = runEnd;
    i += count;
  }
  return pos;
}

/** Whether reads of a guest cluster (entry `i` of table `t`) certainly see zeroes, without reading anything. */
function cowIsZero(io: Qcow2Io, t: CachedTable, i: number, guestCluster: number): boolean {
  const type = l2Type(readHi(t.buf, i), readLo(t.buf, i));
  if (type === ClusterType.ZERO_PLAIN || type === ClusterType.ZERO_ALLOC) return true;
  return type === ClusterType.UNALLOCATED && backingIsZero(io, guestCluster * io.state.clusterSize);
}

/**
 * Fills dest with what reads see at bytes [from, from + dest.length) of a
 * guest cluster (its current entry is `i` of table `t`). Returns true when
 * that is certainly all zeroes.
 */
async function cowFill(io: Qcow2Io, t: CachedTable, i: number, guestCluster: number, from: number, dest: Buffer): Promise<boolean> {
  const st = io.state;
  const hi = readHi(t.buf, i);
  const lo = readLo(t.buf, i);
  const at = guestCluster * st.clusterSize + from;
  switch (l2Type(hi, lo)) {
    case ClusterType.UNALLOCATED:
      if (backingIsZero(io, at)) {
        dest.fill(0);
        return true;
      }
      await readBacking(io, at, dest);
      return isAllZero(dest);
    case ClusterType.ZERO_PLAIN:
    case ClusterType.ZERO_ALLOC:
      dest.fill(0);
      return true;
    case ClusterType.COMPRESSED:
      await io.compressed.read(hi, lo, from, dest);
      return false;
    case ClusterType.NORMAL:
      await st.file.read(hostCluster(io, hi, lo, guestCluster) + from, dest);
      return false;
  }
}

/** Queues the release of the host space an entry being replaced referenced. */
export function freeOld(io: Qcow2Io, hi: number, lo: number): void {
  const st = io.state;
  const type = l2Type(hi, lo);
  if (type === ClusterType.NORMAL || type === ClusterType.ZERO_ALLOC) {
    const off = entryOffset(hi, lo);
    // A damaged entry must not make us decrement some unrelated cluster.
    if (off % st.clusterSize === 0 && off < st.file.length && !st.meta.kindOf(off / st.clusterSize)) {
      st.refcounts.free(off / st.clusterSize);
    }
  } else if (type === ClusterType.COMPRESSED) {
    const ext = compressedExtent(hi, lo, st.clusterBits);
    if (ext.offset + ext.length <= st.file.length + st.clusterSize) st.refcounts.freeBytes(ext.offset, ext.length);
  }
}
