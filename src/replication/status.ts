/**
 * colo-blk's detailed replication status (x-colo-blk-query-replication):
 * what QEMU does not expose. Stage and mode, the latched errors with disk,
 * role, operation and errno, bytes buffered in the active and hidden disks,
 * checkpoint count and duration, failover commit progress, plus
 * copy-before-write counters. Synchronous: everything comes from counters
 * the node keeps as it goes, so a status query costs no I/O.
 */
import type { BlockNode } from '../block/node.js';
import type { CommitOutcome, SecondaryReplication } from './secondary.js';
import type { DiskRole, FailedOperation, LatchedError, ReplicationMode, Stage } from './stage.js';
import type { Errno } from '../block/errors.js';

export interface ReplicationErrorStatus {
  disk: string;
  role: DiskRole;
  operation: FailedOperation;
  errno: Errno;
  errnoNumber: number;
  /** The underlying error's message. */
  desc: string;
  since: string;
  count: number;
  guestVisible: boolean;
}

export interface ReplicationNodeStatus {
  nodeName: string;
  mode: ReplicationMode;
  stage: Stage;
  /** Secondary: the top-id option. */
  topId?: string;
  /** Latched errors, at most one per disk, oldest first; empty when healthy. */
  errors: ReplicationErrorStatus[];
  /** Secondary, while active and hidden are attached: bytes the view wrote since the last checkpoint. */
  activeBytes?: number;
  /** Secondary, likewise: bytes saved before the primary overwrote them. */
  hiddenBytes?: number;
  /** Checkpoints completed (start runs one). */
  checkpoints: number;
  lastCheckpointUs?: number;
  /** Secondary failover: the active commit's progress, or how it ended. */
  commit?: CommitOutcome;
  /** Secondary, while attached: the disks by node name. */
  disks?: { active: string; hidden: string; secondary: string };
  /** Secondary, while running: the copy-before-write filter's counters. */
  copyBeforeWrite?: {
    clusterSize: number;
    pendingClusters: number;
    copies: number;
    copiedBytes: number;
    copyErrors: number;
  };
}

interface StatusSource {
  readonly nodeName: string;
  readonly mode: ReplicationMode;
  readonly stage: Stage;
  readonly topId: string | null;
  readonly file: BlockNode | null;
  readonly latchedErrors: LatchedError[];
}

export function collectStatus(node: StatusSource, secondary: SecondaryReplication | null): ReplicationNodeStatus {
  const out: ReplicationNodeStatus = {
    nodeName: node.nodeName,
    mode: node.mode,
    stage: node.stage,
    errors: node.latchedErrors.map((e) => ({
      disk: e.disk,
      role: e.role,
      operation: e.operation,
      errno: e.errno,
      errnoNumber: e.errnoNumber,
      desc: e.message,
      since: e.since,
      count: e.count,
      guestVisible: e.guestVisible,
    })),
    checkpoints: secondary?.checkpoints.count ?? 0,
  };
  if (node.topId !== null) out.topId = node.topId;
  if (!secondary) return out;

  if (secondary.checkpoints.count > 0) out.lastCheckpointUs = secondary.checkpoints.lastUs;
  const hidden = secondary.hiddenDisk;
  const disk = secondary.secondaryDisk;
  // While the commit runs, `file` is its filter; the active disk is the job's top.
  const active = secondary.commit?.top ?? node.file;
  if (active && hidden && disk) {
    out.disks = { active: active.nodeName, hidden: hidden.nodeName, secondary: disk.nodeName };
    const a = secondary.activeBytes;
    const h = secondary.hiddenBytes;
    if (a !== undefined) out.activeBytes = a;
    if (h !== undefined) out.hiddenBytes = h;
  }
  const cbw = secondary.backup?.cbw;
  if (cbw) {
    out.copyBeforeWrite = {
      clusterSize: cbw.copyClusterSize,
      pendingClusters: cbw.pendingClusters,
      copies: cbw.stats.copies,
      copiedBytes: cbw.stats.copiedBytes,
      copyErrors: cbw.stats.copyErrors,
    };
  }
  const commit = secondary.commitOutcome;
  if (commit) out.commit = commit;
  return out;
}
