/**
 * What the replication commands need from the replication engine. The
 * first four mirror QEMU's replication_*_all(): they act on every
 * replication node and stop at the first error, whose message reaches the
 * client. `query` is colo-blk's own view, richer than QEMU's single bit.
 */
import { constants as osConstants } from 'node:os';
import type { Errno } from '../block/errors.js';
import type { QmpEventMap } from './events.js';

export type ReplicationMode = 'primary' | 'secondary';
export type ReplicationStage = 'none' | 'running' | 'failover' | 'failover-failed' | 'done';

/** Which disk of a replication node an error came from. */
export type ReplicationDiskRole = 'nbd' | 'active' | 'hidden' | 'secondary';

export type ReplicationOperation =
  | 'read' | 'write' | 'write-zeroes' | 'discard' | 'flush'
  | 'copy-before-write' | 'make-empty' | 'commit' | 'backup' | 'start';

export interface ReplicationErrorInfo {
  /** Node name of the disk that failed. */
  disk: string;
  role: ReplicationDiskRole;
  operation: ReplicationOperation;
  errno: Errno;
  /** Human-readable detail (the underlying error's message). */
  desc: string;
}

export interface ReplicationCommitProgress {
  status: 'running' | 'completed' | 'failed';
  /** Bytes committed so far and in total, as a job reports them. */
  offset: number;
  len: number;
  error?: string;
}

export interface ReplicationNodeStatus {
  nodeName: string;
  mode: ReplicationMode;
  stage: ReplicationStage;
  /** Secondary: the node named by `top-id`. */
  topId?: string;
  /** Latched errors, at most one per disk, oldest first; empty when healthy. */
  errors: ReplicationErrorInfo[];
  /** Secondary: bytes the SVM wrote since the last checkpoint (allocated in the active disk). */
  activeBytes?: number;
  /** Secondary: bytes copied before the primary overwrote them (allocated in the hidden disk). */
  hiddenBytes?: number;
  /** Checkpoints completed since start. */
  checkpoints: number;
  /** Duration of the last checkpoint, in microseconds. */
  lastCheckpointUs?: number;
  /** Secondary failover: progress of the active commit. */
  commit?: ReplicationCommitProgress;
}

export interface ReplicationControl {
  /** replication_start_all(mode). */
  start(mode: ReplicationMode): Promise<void>;
  /**
   * replication_stop_all(failover). A secondary failover resolves once the
   * active commit has started; its end is announced by a
   * COLO_BLK_REPLICATION_STAGE event (failover → done or failover-failed).
   */
  stop(failover: boolean): Promise<void>;
  /** replication_do_checkpoint_all(). */
  checkpoint(): Promise<void>;
  /** replication_get_error_all(): rejects with "Block replication is not running" or "I/O error occurred". */
  checkError(): Promise<void>;
  /** One entry per replication node, in the order checkError visits them. */
  query(): ReplicationNodeStatus[];
}

/** The errno number of a code on this host (EIO = 5 on Linux), as QMP reports it. */
export function errnoNumber(code: Errno): number {
  const table = osConstants.errno as Record<string, number>;
  return table[code === 'ENOTSUP' ? 'EOPNOTSUPP' : code] ?? table.EIO ?? 5;
}

/** The data of COLO_BLK_REPLICATION_ERROR for an error a node has just latched. */
export function replicationErrorEvent(
  nodeName: string,
  mode: ReplicationMode,
  error: ReplicationErrorInfo,
  guestVisible: boolean,
): QmpEventMap['COLO_BLK_REPLICATION_ERROR'] {
  return {
    'node-name': nodeName,
    mode,
    disk: error.disk,
    role: error.role,
    operation: error.operation,
    errno: errnoNumber(error.errno),
    'errno-name': error.errno,
    desc: error.desc,
    'guest-visible': guestVisible,
  };
}
