/**
 * Errors across the wire. The server maps block-layer codes onto the eight
 * NBD error numbers exactly as QEMU's server does; the client maps them back,
 * treating any number it does not know as EINVAL (the spec's rule, and
 * QEMU's), never as a reason to disconnect.
 */
import { BlockError, type Errno } from '../block/errors.js';
import { NbdErr } from './constants.js';

export function toNbdErrno(code: Errno): number {
  switch (code) {
    case 'EPERM':
    case 'EROFS':
      return NbdErr.EPERM;
    case 'EIO':
      return NbdErr.EIO;
    case 'ENOMEM':
      return NbdErr.ENOMEM;
    case 'ENOSPC':
    case 'EFBIG':
      return NbdErr.ENOSPC;
    case 'EOVERFLOW':
      return NbdErr.EOVERFLOW;
    case 'ENOTSUP':
      return NbdErr.ENOTSUP;
    case 'ESHUTDOWN':
      return NbdErr.ESHUTDOWN;
    default:
      return NbdErr.EINVAL;
  }
}

/** The NBD error for anything a request handler threw. */
export function errnoOf(err: unknown): number {
  if (BlockError.is(err)) return toNbdErrno(err.code);
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'EDQUOT') return NbdErr.ENOSPC;
  if (code === 'EOPNOTSUPP') return NbdErr.ENOTSUP;
  return typeof code === 'string' ? toNbdErrno(BlockError.from(err, '').code) : NbdErr.EIO;
}

export function fromNbdErrno(errno: number): Errno {
  switch (errno) {
    case NbdErr.EPERM: return 'EPERM';
    case NbdErr.EIO: return 'EIO';
    case NbdErr.ENOMEM: return 'ENOMEM';
    case NbdErr.ENOSPC: return 'ENOSPC';
    case NbdErr.EOVERFLOW: return 'EOVERFLOW';
    case NbdErr.ENOTSUP: return 'ENOTSUP';
    case NbdErr.ESHUTDOWN: return 'ESHUTDOWN';
    default: return 'EINVAL';
  }
}
