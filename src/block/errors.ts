/**
 * The block layer's one error type. Every I/O failure carries an errno-like
 * code so that the NBD server can map it onto the wire, the replication
 * engine can latch it, and QMP can report it, without parsing messages.
 */
import { constants as osConstants } from 'node:os';

export type Errno =
  | 'EIO'
  | 'EINVAL'
  | 'ENOSPC'
  | 'EPERM'
  | 'EROFS'
  | 'ENOTSUP'
  | 'ENOMEM'
  | 'EOVERFLOW'
  | 'ESHUTDOWN'
  | 'ENOENT'
  | 'EBUSY'
  | 'EEXIST'
  | 'EFBIG'
  | 'ECANCELED'
  | 'ENOMEDIUM'
  | 'ECONNRESET'
  | 'ETIMEDOUT'
  | 'EACCES';

const KNOWN: ReadonlySet<string> = new Set<Errno>([
  'EIO', 'EINVAL', 'ENOSPC', 'EPERM', 'EROFS', 'ENOTSUP', 'ENOMEM', 'EOVERFLOW', 'ESHUTDOWN',
  'ENOENT', 'EBUSY', 'EEXIST', 'EFBIG', 'ECANCELED', 'ENOMEDIUM', 'ECONNRESET', 'ETIMEDOUT', 'EACCES',
]);

const BRAND = Symbol.for('colo-blk.BlockError');

export class BlockError extends Error {
  readonly code: Errno;
  readonly [BRAND] = true;

  constructor(code: Errno, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BlockError';
    this.code = code;
  }

  /** The positive errno number of the code on this host (EIO = 5 on Linux). */
  get errno(): number {
    const table = osConstants.errno as Record<string, number>;
    return table[this.code === 'ENOTSUP' ? 'EOPNOTSUPP' : this.code] ?? table.EIO ?? 5;
  }

  static is(value: unknown): value is BlockError {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
  }

  /**
   * Wraps anything thrown by a lower layer (a Node fs error, a socket error)
   * into a BlockError, keeping the errno when it is one we know.
   */
  static from(err: unknown, context: string): BlockError {
    if (BlockError.is(err)) return err;
    const code = (err as { code?: unknown } | null)?.code;
    const mapped: Errno = typeof code === 'string' && KNOWN.has(code)
      ? (code as Errno)
      : code === 'EOPNOTSUPP' ? 'ENOTSUP'
        : code === 'EDQUOT' ? 'ENOSPC'
          : 'EIO';
    const message = err instanceof Error ? err.message : String(err);
    return new BlockError(mapped, `${context}: ${message}`, { cause: err });
  }
}

/** The text `strerror` gives for a code, as QEMU prints it. */
export function strerror(code: Errno): string {
  switch (code) {
    case 'EIO': return 'Input/output error';
    case 'EINVAL': return 'Invalid argument';
    case 'ENOSPC': return 'No space left on device';
    case 'EPERM': return 'Operation not permitted';
    case 'EROFS': return 'Read-only file system';
    case 'ENOTSUP': return 'Operation not supported';
    case 'ENOMEM': return 'Cannot allocate memory';
    case 'EOVERFLOW': return 'Value too large for defined data type';
    case 'ESHUTDOWN': return 'Cannot send after transport endpoint shutdown';
    case 'ENOENT': return 'No such file or directory';
    case 'EBUSY': return 'Device or resource busy';
    case 'EEXIST': return 'File exists';
    case 'EFBIG': return 'File too large';
    case 'ECANCELED': return 'Operation canceled';
    case 'ENOMEDIUM': return 'No medium found';
    case 'ECONNRESET': return 'Connection reset by peer';
    case 'ETIMEDOUT': return 'Connection timed out';
    case 'EACCES': return 'Permission denied';
  }
}
