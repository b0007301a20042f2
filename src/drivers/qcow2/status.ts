/**
 * Block status of one qcow2 layer, as QEMU's qcow2_co_block_status reports
 * it: NORMAL → data with its host offset, zero clusters → zero (with the host
 * offset when one is still allocated), compressed → data without an offset,
 * unallocated → nothing, so that a chain walk falls through to the backing.
 */
import { Status, type BlockStatus } from '../../block/node.js';
import { ClusterType, entryOffset, l2Type, readHi, readLo } from './format.js';
import { hostCluster, type Qcow2Io } from './context.js';

function flagsOf(type: ClusterType): number {
  switch (type) {
    case ClusterType.NORMAL: return Status.DATA | Status.ALLOCATED | Status.OFFSET_VALID;
    case ClusterType.ZERO_ALLOC: return Status.ZERO | Status.ALLOCATED | Status.OFFSET_VALID;
    case ClusterType.ZERO_PLAIN: return Status.ZERO | Status.ALLOCATED;
    case ClusterType.COMPRESSED: return Status.DATA | Status.ALLOCATED;
    case ClusterType.UNALLOCATED: return 0;
  }
}

export async function blockStatusOf(io: Qcow2Io, offset: number, length: number): Promise<BlockStatus> {
  const st = io.state;
  const cs = st.clusterSize;
  const l2e = st.l2.l2Entries;
  const end = offset + length;
  const first = Math.floor(offset / cs);
  let type: ClusterType | null = null;
  let host = -1;
  let c = first;
  scan: while (c * cs < end) {
    const l1i = Math.floor(c / l2e);
    const got = st.l2.acquire(l1i);
    const table = got instanceof Promise ? await got : got;
    if (!table) {
      // No L2 table: the whole range it would map is unallocated.
      if (type !== null && type !== ClusterType.UNALLOCATED) break;
      type = ClusterType.UNALLOCATED;
      c = (l1i + 1) * l2e;
      continue;
    }
    try {
      for (let i = c - l1i * l2e; i < l2e && c * cs < end; i++, c++) {
        const hi = readHi(table.buf, i);
        const lo = readLo(table.buf, i);
        const t = l2Type(hi, lo);
        if (type === null) {
          type = t;
          if (t === ClusterType.NORMAL || t === ClusterType.ZERO_ALLOC) host = hostCluster(io, hi, lo, c);
          continue;
        }
        if (t !== type) break scan;
        if (t === ClusterType.NORMAL || t === ClusterType.ZERO_ALLOC) {
          if (entryOffset(hi, lo) !== host + (c - first) * cs) break scan;
        }
      }
    } finally {
      st.l2.cache.release(table);
    }
  }
  const flags = flagsOf(type ?? ClusterType.UNALLOCATED);
  const runEnd = Math.min(c * cs, end);
  const inFirst = offset - first * cs;
  return {
    length: runEnd - offset,
    flags,
    offset: flags & Status.OFFSET_VALID ? host + inFirst : -1,
  };
}
