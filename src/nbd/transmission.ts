/**
 * Serving requests in the transmission phase: validation with the spec's
 * error numbers, and execution on the export's node producing the reply
 * buffers, ready for the socket. No I/O happens here beyond the block layer.
 *
 * Reads with structured replies describe holes as OFFSET_HOLE chunks,
 * computed over the whole backing chain the way QEMU does (a range that reads
 * as zeroes is a hole, whether or not a layer allocated it). Block status
 * reports `base:allocation` and `qemu:allocation-depth` from the same chain
 * walk. Overlapping requests go through the export's range lock so that they
 * take effect in the order they arrived.
 */
import { blockStatusAbove } from '../block/chain.js';
import { BlockError } from '../block/errors.js';
import { Req, Status } from '../block/node.js';
import type { RangeLockGuard } from '../block/range-lock.js';
import type { Logger } from '../util/log.js';
import {
  Cmd, CmdFlag, MetaId, NbdErr, SIMPLE_REPLY_SIZE, StateFlag, commandName,
} from './constants.js';
import { errnoOf } from './errno.js';
import type { NbdExport } from './export.js';
import type { Session } from './negotiation.js';
import {
  DATA_CHUNK_PREFIX, encodeBlockStatusChunk, encodeErrorChunk, encodeHoleChunk, encodeNoneChunk, encodeSimpleReply,
  writeDataChunkPrefix, writeSimpleReply, type RequestFrame,
} from './server-codec.js';

/** QEMU's cap on extents in one BLOCK_STATUS chunk. */
export const MAX_EXTENTS = 128 * 1024;

export interface Rejection {
  errno: number;
  message: string;
}

/** Whether a command changes the export (and so needs a writable export). */
function isWrite(type: number): boolean {
  return type === Cmd.WRITE || type === Cmd.WRITE_ZEROES || type === Cmd.TRIM;
}

export class TransmissionHandler {
  private readonly validFlags: number[];
  /** Req.FUA when the export is writethrough, else 0. */
  private readonly forceFua: number;

  constructor(
    private readonly exp: NbdExport,
    private readonly session: Session,
    private readonly maxPayload: number,
    private readonly log: Logger,
  ) {
    this.forceFua = exp.writethrough ? Req.FUA : 0;
    const f = CmdFlag;
    this.validFlags = [];
    this.validFlags[Cmd.READ] = f.FUA | (session.structured ? f.DF : 0);
    this.validFlags[Cmd.WRITE] = f.FUA;
    this.validFlags[Cmd.FLUSH] = f.FUA;
    this.validFlags[Cmd.TRIM] = f.FUA;
    this.validFlags[Cmd.CACHE] = f.FUA;
    this.validFlags[Cmd.WRITE_ZEROES] = f.FUA | f.NO_HOLE | f.FAST_ZERO;
    this.validFlags[Cmd.BLOCK_STATUS] = f.FUA | f.REQ_ONE;
  }

  get structured(): boolean {
    return this.session.structured;
  }

  /** The spec's answer to a request that must not run, or null when it may. */
  validate(req: RequestFrame): Rejection | null {
    const type = req.type;
    const valid = this.validFlags[type];
    if (valid === undefined) return { errno: NbdErr.EINVAL, message: `unsupported command ${type}` };
    if (isWrite(type) && !this.exp.writable) return { errno: NbdErr.EPERM, message: 'export is read-only' };
    if ((req.flags & ~valid) !== 0) {
      return {
        errno: NbdErr.EINVAL,
        message: `unsupported flags for command ${commandName(type)} (got 0x${req.flags.toString(16)})`,
      };
    }
    if (type === Cmd.READ && req.length > this.maxPayload) {
      // A DF read must fit one chunk; say so with the spec's EOVERFLOW.
      return (req.flags & CmdFlag.DF)
        ? { errno: NbdErr.EOVERFLOW, message: `len (${req.length}) is too large for an unfragmented read` }
        : { errno: NbdErr.EINVAL, message: `len (${req.length}) is larger than max len (${this.maxPayload})` };
    }
    if (req.oversized) {
      return { errno: NbdErr.EINVAL, message: `len (${req.length}) is larger than max len (${this.maxPayload})` };
    }
    if (type === Cmd.FLUSH) return null;
    const size = this.exp.size;
    if (req.offset > size || req.length > size - req.offset) {
      const errno = type === Cmd.WRITE || type === Cmd.WRITE_ZEROES ? NbdErr.ENOSPC : NbdErr.EINVAL;
      return { errno, message: `operation past EOF; From: ${req.offset}, Len: ${req.length}, Size: ${size}` };
    }
    if (type === Cmd.BLOCK_STATUS) {
      if (!this.session.meta.baseAllocation && !this.session.meta.allocationDepth) {
        return { errno: NbdErr.EINVAL, message: 'no metadata context was negotiated' };
      }
      if (req.length === 0) return { errno: NbdErr.EINVAL, message: 'need non-zero length' };
    }
    return null;
  }

  /** The reply for a rejected request (READ with structured replies must get a chunk). */
  rejection(req: RequestFrame, r: Rejection): Buffer {
    return this.session.structured
      ? encodeErrorChunk(req.cookieHi, req.cookieLo, r.errno, r.message)
      : encodeSimpleReply(r.errno, req.cookieHi, req.cookieLo);
  }

  /** Runs a valid request and returns its reply; never rejects. */
  serve(req: RequestFrame): Promise<Buffer[]> {
    if (req.type !== Cmd.WRITE) return this.serveAny(req);
    // Every guest write comes this way: no async frame when its range is free.
    if (req.length === 0) return this.serveWrite(req, null);
    const lock = this.exp.lock;
    const end = req.offset + req.length;
    const guard = lock.tryAcquire(req.offset, end, 'exclusive');
    if (guard) return this.serveWrite(req, guard);
    return lock.acquire(req.offset, end, 'exclusive').then((g) => this.serveWrite(req, g));
  }

  private serveWrite(req: RequestFrame, guard: RangeLockGuard | null): Promise<Buffer[]> {
    // Payloads are per request (a buffer of their own, or a slice of a read slab, which is never reused).
    const flags = (req.flags & CmdFlag.FUA ? Req.FUA : 0) | this.forceFua | Req.STABLE_BUFFER;
    return this.exp.backend.write(req.offset, req.payload!, flags).then(
      () => {
        guard?.release();
        const stats = this.exp.stats;
        stats.writes++;
        stats.bytesWritten += req.length;
        return [this.ok(req)];
      },
      (err: unknown) => {
        guard?.release();
        return [this.failed(req, err)];
      },
    );
  }

  /** Everything but WRITE. */
  private async serveAny(req: RequestFrame): Promise<Buffer[]> {
    const stats = this.exp.stats;
    let guard: RangeLockGuard | null = null;
    try {
      if (req.length > 0 && (req.type === Cmd.READ || isWrite(req.type))) {
        const mode = req.type === Cmd.READ ? 'shared' : 'exclusive';
        const end = req.offset + req.length;
        guard = this.exp.lock.tryAcquire(req.offset, end, mode) ?? await this.exp.lock.acquire(req.offset, end, mode);
      }
      switch (req.type) {
        case Cmd.READ: {
          const out = await this.read(req);
          stats.reads++;
          stats.bytesRead += req.length;
          return out;
        }
        case Cmd.WRITE_ZEROES: {
          let flags = req.flags & CmdFlag.NO_HOLE ? 0 : Req.MAY_UNMAP;
          if (req.flags & CmdFlag.FAST_ZERO) flags |= Req.NO_FALLBACK;
          if (req.flags & CmdFlag.FUA) flags |= Req.FUA;
          flags |= this.forceFua;
          await this.exp.backend.writeZeroes(req.offset, req.length, flags);
          stats.writes++;
          return [this.ok(req)];
        }
        case Cmd.TRIM:
          await this.exp.backend.discard(req.offset, req.length);
          if ((req.flags & CmdFlag.FUA) || this.forceFua) await this.exp.backend.flush();
          return [this.ok(req)];
        case Cmd.FLUSH:
          await this.exp.backend.flush();
          return [this.ok(req)];
        case Cmd.CACHE:
          return [this.ok(req)];
        case Cmd.BLOCK_STATUS:
          return await this.blockStatus(req);
        default:
          throw new BlockError('EINVAL', `unsupported command ${req.type}`);
      }
    } catch (err) {
      return [this.failed(req, err)];
    } finally {
      guard?.release();
    }
  }

  /** The reply for a request that failed on the node; the failure is counted and logged (rate-limited). */
  private failed(req: RequestFrame, err: unknown): Buffer {
    this.exp.stats.errors++;
    const message = err instanceof Error ? err.message : String(err);
    const errno = errnoOf(err);
    const skipped = this.exp.errorLogSlot();
    if (skipped !== null) {
      this.log.warn('nbd.request-failed', {
        export: this.exp.name, command: commandName(req.type), offset: req.offset, length: req.length, errno, error: message,
        ...(skipped > 0 ? { alsoFailedSinceLastLine: skipped } : {}),
      });
    }
    return this.rejection(req, { errno, message });
  }

  private ok(req: RequestFrame): Buffer {
    return encodeSimpleReply(0, req.cookieHi, req.cookieLo);
  }

  private async read(req: RequestFrame): Promise<Buffer[]> {
    const { offset, length, cookieHi, cookieLo } = req;
    if (!this.session.structured) {
      const buf = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE + length);
      await this.exp.backend.read(offset, buf.subarray(SIMPLE_REPLY_SIZE));
      writeSimpleReply(buf, 0, 0, cookieHi, cookieLo);
      return [buf];
    }
    if (length === 0) return [encodeNoneChunk(cookieHi, cookieLo)];
    if (req.flags & CmdFlag.DF) return [await this.dataChunk(req, offset, length, true)];

    const extents = await this.readExtents(offset, length);
    if (extents.length === 2 && extents[1] === 0) return [await this.dataChunk(req, offset, length, true)];
    const chunks: Array<Promise<Buffer> | Buffer> = [];
    let at = offset;
    for (let i = 0; i < extents.length; i += 2) {
      const n = extents[i]!;
      const last = i + 2 === extents.length;
      chunks.push(extents[i + 1] ? encodeHoleChunk(last, cookieHi, cookieLo, at, n) : this.dataChunk(req, at, n, last));
      at += n;
    }
    return Promise.all(chunks);
  }

  /** Reads straight into the reply buffer, behind room for the chunk header. */
  private async dataChunk(req: RequestFrame, offset: number, length: number, done: boolean): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(DATA_CHUNK_PREFIX + length);
    await this.exp.backend.read(offset, buf.subarray(DATA_CHUNK_PREFIX));
    writeDataChunkPrefix(buf, 0, done, req.cookieHi, req.cookieLo, offset, length);
    return buf;
  }

  /** (length, isZero) pairs over the range, merged, from the chain's status. */
  private async readExtents(offset: number, length: number): Promise<number[]> {
    const out: number[] = [];
    const node = this.exp.node;
    const end = offset + length;
    for (let pos = offset; pos < end;) {
      const st = await blockStatusAbove(node, null, pos, end - pos);
      const zero = st.flags & Status.ZERO ? 1 : 0;
      if (out.length > 0 && out[out.length - 1] === zero) out[out.length - 2] += st.length;
      else out.push(st.length, zero);
      pos += st.length;
    }
    return out;
  }

  private async blockStatus(req: RequestFrame): Promise<Buffer[]> {
    const one = (req.flags & CmdFlag.REQ_ONE) !== 0;
    const meta = this.session.meta;
    const out: Buffer[] = [];
    if (meta.baseAllocation) {
      const extents = await this.statusExtents(req.offset, req.length, one, 'allocation');
      out.push(encodeBlockStatusChunk(!meta.allocationDepth, req.cookieHi, req.cookieLo, MetaId.BASE_ALLOCATION, extents));
    }
    if (meta.allocationDepth) {
      const extents = await this.statusExtents(req.offset, req.length, one, 'depth');
      out.push(encodeBlockStatusChunk(true, req.cookieHi, req.cookieLo, MetaId.ALLOCATION_DEPTH, extents));
    }
    return out;
  }

  /**
   * (length, value) pairs for one context. Adjacent runs with the same value
   * merge, also under REQ_ONE (so its single extent is as long as it can be,
   * as with QEMU).
   */
  private async statusExtents(offset: number, length: number, one: boolean, kind: 'allocation' | 'depth'): Promise<number[]> {
    const out: number[] = [];
    const node = this.exp.node;
    const end = offset + length;
    for (let pos = offset; pos < end && out.length < MAX_EXTENTS * 2;) {
      const st = await blockStatusAbove(node, null, pos, end - pos);
      const value = kind === 'depth'
        ? st.depth
        : (st.flags & Status.DATA ? 0 : StateFlag.HOLE) | (st.flags & Status.ZERO ? StateFlag.ZERO : 0);
      if (out.length > 0 && out[out.length - 1] === value) {
        out[out.length - 2] += st.length;
      } else {
        if (one && out.length > 0) break;
        out.push(st.length, value);
      }
      pos += st.length;
    }
    return out;
  }
}
