/**
 * Replication stages and modes, and the error a node latches. The stage
 * names are QEMU's (BLOCK_REPLICATION_*), lower-cased for JSON.
 */
import type { Errno } from '../block/errors.js';

export type ReplicationMode = 'primary' | 'secondary';

export type Stage = 'none' | 'running' | 'failover' | 'failover-failed' | 'done';

/** The QAPI ReplicationMode enum order, which QEMU's mode-mismatch message prints. */
export function modeNumber(mode: ReplicationMode): number {
  return mode === 'primary' ? 0 : 1;
}

/** Which part of the machinery failed. */
export type FailedOperation =
  | 'write'
  | 'flush'
  | 'backup'
  | 'commit-start'
  | 'commit-read'
  | 'commit-write'
  | 'commit-flush'
  | 'commit-status'
  | 'make-empty';

/**
 * What colo-blk keeps of a latched error. QEMU keeps only the errno (and
 * reports the fixed text "I/O error occurred"); this says which disk, which
 * operation and which errno, and when.
 */
export interface LatchedError {
  /** Node name of the disk the failing request went to. */
  disk: string;
  operation: FailedOperation;
  errno: Errno;
  /** The host's errno number, e.g. 5 for EIO. */
  errnoNumber: number;
  message: string;
  /** ISO time of the first failure since the error was last cleared. */
  since: string;
  /** Failures latched since then (the first one is the one described). */
  count: number;
}
