/**
 * Errors of the replication control operations (start, checkpoint, get-error,
 * stop). Each failure has a stable code for programs and QEMU's exact text as
 * its message, so the QMP layer can return the message unchanged.
 */
import { BlockError, strerror } from '../block/errors.js';
import type { ReplicationMode } from './stage.js';
import { modeNumber } from './stage.js';

export type ReplicationErrorCode =
  | 'NOT_RUNNING'
  | 'RUNNING_OR_DONE'
  | 'MODE_MISMATCH'
  | 'NO_ACTIVE_BACKING'
  | 'NO_HIDDEN_BACKING'
  | 'NO_BLOCK_BACKEND'
  | 'LENGTH_MISMATCH'
  | 'NO_MAKE_EMPTY'
  | 'REOPEN_FAILED'
  | 'INVALID_TOP'
  | 'BACKUP_START_FAILED'
  | 'BACKUP_CANCELLED'
  | 'ACTIVE_EJECTED'
  | 'HIDDEN_EJECTED'
  | 'MAKE_EMPTY_UNSUPPORTED'
  | 'MAKE_EMPTY_FAILED'
  | 'IO_ERROR'
  | 'COMMIT_START_FAILED'
  | 'FAILOVER_ONLY_FOR_STOP';

export class ReplicationError extends Error {
  constructor(readonly code: ReplicationErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ReplicationError';
  }

  static is(value: unknown): value is ReplicationError {
    return value instanceof ReplicationError;
  }
}

/** QEMU's messages, one constructor per failure. */
export const Errors = {
  notRunning: () => new ReplicationError('NOT_RUNNING', 'Block replication is not running'),
  runningOrDone: () => new ReplicationError('RUNNING_OR_DONE', 'Block replication is running or done'),
  modeMismatch: (needs: ReplicationMode, got: ReplicationMode) => new ReplicationError(
    'MODE_MISMATCH',
    `The parameter mode's value is invalid, needs ${modeNumber(needs)}, but got ${modeNumber(got)}`,
  ),
  noActiveBacking: () => new ReplicationError('NO_ACTIVE_BACKING', "Active disk doesn't have backing file"),
  noHiddenBacking: () => new ReplicationError('NO_HIDDEN_BACKING', "Hidden disk doesn't have backing file"),
  noBlockBackend: () => new ReplicationError('NO_BLOCK_BACKEND', "The secondary disk doesn't have block backend"),
  lengthMismatch: () => new ReplicationError('LENGTH_MISMATCH', "Active disk, hidden disk, secondary disk's length are not the same"),
  noMakeEmpty: () => new ReplicationError('NO_MAKE_EMPTY', "Active disk or hidden disk doesn't support make_empty"),
  reopenFailed: (cause: unknown) => new ReplicationError('REOPEN_FAILED', messageOf(cause), { cause }),
  invalidTop: () => new ReplicationError('INVALID_TOP', 'No top_bs or it is invalid'),
  backupStartFailed: (cause: unknown) => new ReplicationError('BACKUP_START_FAILED', messageOf(cause), { cause }),
  backupCancelled: () => new ReplicationError('BACKUP_CANCELLED', 'Backup job was cancelled unexpectedly'),
  activeEjected: (node: string) => new ReplicationError('ACTIVE_EJECTED', `Active disk ${node} is ejected`),
  hiddenEjected: (node: string) => new ReplicationError('HIDDEN_EJECTED', `Hidden disk ${node} is ejected`),
  ioError: () => new ReplicationError('IO_ERROR', 'I/O error occurred'),
  commitStartFailed: (cause: unknown) => new ReplicationError('COMMIT_START_FAILED', messageOf(cause), { cause }),
  failoverOnlyForStop: () => new ReplicationError('FAILOVER_ONLY_FOR_STOP', "Parameter 'failover' is only for stopping replication"),
};

/** bdrv_make_empty's messages: the driver cannot empty, or it failed with an errno. */
export function makeEmptyError(node: { filename: string }, err: unknown): ReplicationError {
  const cause = BlockError.from(err, 'make_empty');
  if (cause.code === 'ENOTSUP' && cause.message.endsWith('does not support emptying nodes')) {
    return new ReplicationError('MAKE_EMPTY_UNSUPPORTED', cause.message, { cause });
  }
  return new ReplicationError('MAKE_EMPTY_FAILED', `Failed to empty ${node.filename}: ${strerror(cause.code)}`, { cause });
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
