/**
 * Replication stages and modes, and the errors a node latches. The stage
 * names are QEMU's (BLOCK_REPLICATION_*), lower-cased for JSON.
 */
import type { Errno } from '../block/errors.js';

export type ReplicationMode = 'primary' | 'secondary';

export type Stage = 'none' | 'running' | 'failover' | 'failover-failed' | 'done';

/** The QAPI ReplicationMode enum order, which QEMU's mode-mismatch message prints. */
export function modeNumber(mode: ReplicationMode): number {
  return mode === 'primary' ? 0 : 1;
}

/** Which disk of the replication an error concerns: the primary's link, or a secondary disk. */
export type DiskRole = 'nbd' | 'active' | 'hidden' | 'secondary';

/** What was being done when it failed. */
export type FailedOperation =
  | 'read'
  | 'write'
  | 'write-zeroes'
  | 'discard'
  | 'flush'
  | 'copy-before-write'
  | 'make-empty'
  | 'commit'
  | 'backup'
  | 'start';

/**
 * What colo-blk keeps of a latched error. QEMU keeps only a number (and
 * reports the fixed text "I/O error occurred"); this says which disk, which
 * operation and which errno, since when and how often.
 */
export interface LatchedError {
  /** Node name of the disk the failing request went to. */
  disk: string;
  role: DiskRole;
  operation: FailedOperation;
  errno: Errno;
  /** The host's errno number, e.g. 5 for EIO. */
  errnoNumber: number;
  message: string;
  /** ISO time of the first failure on this disk since errors were last cleared. */
  since: string;
  /** Failures on this disk since then (the first one is the one described). */
  count: number;
  /** Whether the request's issuer saw the error (false when it was swallowed, as on the primary). */
  guestVisible: boolean;
}
