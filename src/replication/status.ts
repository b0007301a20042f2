/**
 * colo-blk's detailed replication status (x-colo-blk-query-replication):
 * what QEMU does not expose. Stage, mode, the latched error with disk,
 * operation and errno, bytes buffered in the active and hidden disks,
 * copy-before-write counters, checkpoint timings, and failover progress.
 */
import type { BlockNode } from '../block/node.js';
import { Status } from '../block/node.js';
import type { JobStatus } from '../jobs/job.js';
import type { SecondaryReplication } from './secondary.js';
import type { LatchedError, ReplicationMode, Stage } from './stage.js';

export interface ReplicationNodeStatus {
  'node-name': string;
  mode: ReplicationMode;
  stage: Stage;
  'top-id'?: string;
  error: null | {
    disk: string;
    operation: LatchedError['operation'];
    errno: LatchedError['errno'];
    'errno-number': number;
    message: string;
    since: string;
    count: number;
  };
  /** Secondary only, while the extra children are attached. */
  disks?: { active: string; hidden: string; secondary: string };
  buffered?: { active: number; hidden: number };
  'copy-before-write'?: {
    'cluster-size': number;
    'pending-clusters': number;
    copies: number;
    'copied-bytes': number;
    'copy-errors': number;
    'last-copy-error'?: { stage: 'read' | 'write'; node: string; errno: string; message: string };
  };
  checkpoints?: { count: number; 'last-ms': number; 'total-ms': number };
  commit?: { id: string; status: JobStatus; current: number; total: number };
}

interface StatusSource {
  readonly nodeName: string;
  readonly mode: ReplicationMode;
  readonly stage: Stage;
  readonly topId: string | null;
  readonly file: BlockNode | null;
  readonly latchedError: LatchedError | null;
}

export async function collectStatus(node: StatusSource, secondary: SecondaryReplication | null): Promise<ReplicationNodeStatus> {
  const latched = node.latchedError;
  const out: ReplicationNodeStatus = {
    'node-name': node.nodeName,
    mode: node.mode,
    stage: node.stage,
    error: latched && {
      disk: latched.disk,
      operation: latched.operation,
      errno: latched.errno,
      'errno-number': latched.errnoNumber,
      message: latched.message,
      since: latched.since,
      count: latched.count,
    },
  };
  if (node.topId !== null) out['top-id'] = node.topId;
  if (!secondary) return out;

  const hidden = secondary.hiddenDisk;
  const disk = secondary.secondaryDisk;
  const commit = secondary.commit;
  // While the commit runs, `file` is its filter; the active disk is the job's top.
  const active = commit ? commit.top : node.file;
  if (active && hidden && disk) {
    out.disks = { active: active.nodeName, hidden: hidden.nodeName, secondary: disk.nodeName };
    out.buffered = { active: await allocatedBytes(active), hidden: await allocatedBytes(hidden) };
  }
  const cbw = secondary.backup?.cbw;
  if (cbw) {
    const s = cbw.stats;
    out['copy-before-write'] = {
      'cluster-size': cbw.copyClusterSize,
      'pending-clusters': cbw.pendingClusters,
      copies: s.copies,
      'copied-bytes': s.copiedBytes,
      'copy-errors': s.copyErrors,
    };
    if (s.lastError) {
      out['copy-before-write']['last-copy-error'] = {
        stage: s.lastError.stage, node: s.lastError.node, errno: s.lastError.code, message: s.lastError.message,
      };
    }
  }
  const c = secondary.checkpoints;
  out.checkpoints = { count: c.count, 'last-ms': round(c.lastMs), 'total-ms': round(c.totalMs) };
  if (commit) {
    const p = commit.progress;
    out.commit = { id: commit.id, status: commit.status, current: p.current, total: p.total };
  }
  return out;
}

/** Bytes a layer holds itself: a driver's own count when it keeps one, else a block-status walk. */
export async function allocatedBytes(node: BlockNode): Promise<number> {
  if (node.isClosed) return 0;
  const own = (node as unknown as { allocatedBytes?: unknown }).allocatedBytes;
  if (typeof own === 'number') return own;
  let total = 0;
  for (let offset = 0; offset < node.size;) {
    const st = await node.blockStatus(offset, node.size - offset);
    if (st.flags & Status.ALLOCATED) total += st.length;
    offset += st.length;
  }
  return total;
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
