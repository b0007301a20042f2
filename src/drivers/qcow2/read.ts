/**
 * The read path. A request is split into segments by cluster type; host
 * clusters that are contiguous in the file become one read, runs of
 * unallocated clusters one backing read, and all segments are read in
 * parallel. The caller holds a shared range lock on the guest clusters.
 */
import { ClusterType, l2Type, readHi, readLo } from './format.js';
import { hostCluster, readBacking, type Qcow2Io } from './context.js';
import type { CachedTable } from './table-cache.js';

const enum Run { NONE, HOST, BACKING }

/**
 * The host offset of guest cluster `c` when a read can go straight to the
 * file without waiting for anything (table cached, NORMAL entry), else -1.
 */
export function directReadHost(io: Qcow2Io, c: number): number {
  const st = io.state;
  const l2e = st.l2.l2Entries;
  const l1i = Math.floor(c / l2e);
  const off = st.l2.tableOffset(l1i);
  if (off === 0) return -1;
  const t = st.l2.cache.peek(off);
  if (!t) return -1;
  const i = c - l1i * l2e;
  const hi = readHi(t.buf, i);
  const lo = readLo(t.buf, i);
  if (l2Type(hi, lo) !== ClusterType.NORMAL) return -1;
  return hostCluster(io, hi, lo, c);
}

export async function readRange(io: Qcow2Io, offset: number, buf: Buffer): Promise<void> {
  const st = io.state;
  const cs = st.clusterSize;
  const l2e = st.l2.l2Entries;
  const end = offset + buf.length;
  const jobs: Array<Promise<void>> = [];

  // The run being coalesced: its kind, where it starts in buf, its length,
  // and (HOST) the file offset it starts at / (BACKING) the guest offset.
  let run = Run.NONE;
  let runBuf = 0;
  let runLen = 0;
  let runAt = 0;
  const flushRun = (): void => {
    if (run === Run.HOST) jobs.push(st.file.read(runAt, buf.subarray(runBuf, runBuf + runLen)));
    else if (run === Run.BACKING) jobs.push(readBacking(io, runAt, buf.subarray(runBuf, runBuf + runLen)));
    run = Run.NONE;
  };

  let pos = offset;
  try {
    while (pos < end) {
      const ci = Math.floor(pos / cs);
      const l1i = Math.floor(ci / l2e);
      const got = st.l2.acquire(l1i);
      const table: CachedTable | null = got instanceof Promise ? await got : got;
      try {
        for (let i = ci - l1i * l2e; pos < end && i < l2e; i++) {
          const clusterStart = (l1i * l2e + i) * cs;
          const inC = pos - clusterStart;
          const n = Math.min(cs - inC, end - pos);
          const at = pos - offset;
          const hi = table ? readHi(table.buf, i) : 0;
          const lo = table ? readLo(table.buf, i) : 0;
          switch (l2Type(hi, lo)) {
            case ClusterType.NORMAL: {
              const host = hostCluster(io, hi, lo, l1i * l2e + i) + inC;
              if (run === Run.HOST && runBuf + runLen === at && runAt + runLen === host) {
                runLen += n;
              } else {
                flushRun();
                run = Run.HOST;
                runBuf = at;
                runLen = n;
                runAt = host;
              }
              break;
            }
            case ClusterType.UNALLOCATED:
              if (run === Run.BACKING && runBuf + runLen === at) {
                runLen += n;
              } else {
                flushRun();
                run = Run.BACKING;
                runBuf = at;
                runLen = n;
                runAt = pos;
              }
              break;
            case ClusterType.ZERO_PLAIN:
            case ClusterType.ZERO_ALLOC:
              flushRun();
              buf.fill(0, at, at + n);
              break;
            case ClusterType.COMPRESSED:
              flushRun();
              jobs.push(io.compressed.read(hi, lo, inC, buf.subarray(at, at + n)));
              break;
          }
          pos += n;
        }
      } finally {
        if (table) st.l2.cache.release(table);
      }
    }
    flushRun();
  } catch (err) {
    // Every started read settles before the caller releases its lock.
    await Promise.allSettled(jobs);
    throw err;
  }
  if (jobs.length === 1) {
    await jobs[0];
  } else if (jobs.length > 1) {
    for (const r of await Promise.allSettled(jobs)) if (r.status === 'rejected') throw r.reason;
  }
}
