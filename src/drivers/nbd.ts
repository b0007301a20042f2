/**
 * `nbd`: a node whose content lives on an NBD server. This is how the
 * primary's writes reach the secondary in COLO, so it speaks to every server
 * QEMU's driver speaks to (qemu-nbd, qemu-storage-daemon, nbdkit with or
 * without structured replies, colo-blk) and takes QEMU's blockdev options:
 * `server` ({type: inet, host, port} or {type: unix, path}; also the legacy
 * flat `host`/`port`/`path` and a `filename` URI), `export`,
 * `reconnect-delay` and `open-timeout` (seconds), plus `max-in-flight`
 * (ours; QEMU's fixed 16 is the default).
 *
 * Requests honour the server's block sizes: split at the maximum payload,
 * aligned to the minimum with read-modify-write at unaligned edges.
 *
 * Block status: an NBD export is a whole disk, not a layer over a backing
 * file, so every extent is ALLOCATED — a chain walk must stop here, and a
 * `base:allocation` hole (no DATA) is not an invitation to read the node's
 * `backing`. HOLE maps to "not DATA", ZERO to ZERO. Without the context the
 * whole range is reported as data.
 */
import { BlockError } from '../block/errors.js';
import type { DriverDefinition, OpenContext } from '../block/graph.js';
import { BlockNode, Req, Status, type BlockStatus } from '../block/node.js';
import { isDict, OptionReader } from '../block/options.js';
import { RangeLock } from '../block/range-lock.js';
import { rootLogger } from '../util/log.js';
import { describe, nbdUri, parseNbdUri, readSocketAddress, type SocketAddress } from '../nbd/address.js';
import type { NbdClient } from '../nbd/client.js';
import { CmdFlag, META_BASE_ALLOCATION, StateFlag, TxFlag } from '../nbd/constants.js';
import { ReconnectingClient, type ConnectionState } from '../nbd/reconnect.js';

const MAX_REQUEST = 32 * 1024 * 1024;
/** Lengths without a payload (trim, block status) are 32-bit on the wire. */
const MAX_U32 = 0xffffffff;

export class NbdNode extends BlockNode {
  readonly driver = 'nbd';
  private readonly maxIo: number;
  private readonly align: number;
  private readonly flags: number;
  /** Serialises read-modify-write at unaligned edges (only when the server's minimum block is > 1). */
  private readonly rmwLock = new RangeLock();

  constructor(
    nodeName: string | undefined,
    readOnly: boolean,
    private readonly conn: ReconnectingClient,
    private readonly exportName: string,
  ) {
    super(nodeName, readOnly);
    const info = conn.info;
    this.flags = info.txFlags;
    this.align = info.minBlock;
    const max = Math.min(info.maxBlock, MAX_REQUEST);
    this.maxIo = max - (max % this.align);
  }

  override get size(): number {
    return this.conn.info.size;
  }

  override get filename(): string {
    return nbdUri(this.conn.address, this.exportName);
  }

  /** Connection state, for status reports: connected, waiting, failing, dead, closed. */
  get connectionState(): ConnectionState {
    return this.conn.state;
  }

  /** Calls `listener` on every connection state change; returns the unsubscribe function. */
  onConnectionStateChange(listener: (state: ConnectionState, error: BlockError | null) => void): () => void {
    return this.conn.onStateChange(listener);
  }

  private has(flag: number): boolean {
    return (this.flags & flag) !== 0;
  }

  // ------------------------------------------------------------------ reads

  protected async doRead(offset: number, buf: Buffer): Promise<void> {
    const a = this.align;
    if (a === 1 || (offset % a === 0 && buf.length % a === 0)) return this.readAligned(offset, buf);
    const start = offset - (offset % a);
    const end = Math.min(roundUp(offset + buf.length, a), this.size);
    const bounce = Buffer.allocUnsafe(end - start);
    await this.readAligned(start, bounce);
    bounce.copy(buf, 0, offset - start, offset - start + buf.length);
  }

  private readAligned(offset: number, buf: Buffer): Promise<void> {
    return this.split(offset, buf.length, this.maxIo, (c, at, len) =>
      c.read(at, len === buf.length ? buf : buf.subarray(at - offset, at - offset + len)));
  }

  // ----------------------------------------------------------------- writes

  protected doWrite(offset: number, buf: Buffer, flags: number, released?: () => void): Promise<void> {
    // A request that may be sent again after a reconnect still needs its payload.
    const early = released && !this.conn.retries ? released : undefined;
    if (this.align === 1) return this.writeAligned(offset, buf, flags, early);
    return this.writeUnaligned(offset, buf, flags, early);
  }

  private async writeUnaligned(offset: number, buf: Buffer, flags: number, early: (() => void) | undefined): Promise<void> {
    const a = this.align;
    // The server can only write whole blocks: merge the edges with what is there.
    const start = offset - (offset % a);
    const end = Math.min(roundUp(offset + buf.length, a), this.size);
    const guard = await this.rmwLock.acquire(start, end, 'exclusive');
    try {
      if (start === offset && end === offset + buf.length) return await this.writeAligned(offset, buf, flags, early);
      const bounce = Buffer.allocUnsafe(end - start);
      await this.readAligned(start, bounce.subarray(0, a));
      if (end - a > start) await this.readAligned(end - a, bounce.subarray(end - a - start));
      buf.copy(bounce, offset - start);
      early?.();
      await this.writeAligned(start, bounce, flags);
    } finally {
      guard.release();
    }
  }

  private writeAligned(offset: number, buf: Buffer, flags: number, released?: () => void): Promise<void> {
    const fua = (flags & Req.FUA) !== 0;
    // The replicated write path: one request, no flush, no promise of our own.
    if (!fua && buf.length <= this.maxIo) return this.conn.run((c) => c.write(offset, buf, 0, released));
    return this.writeSplit(offset, buf, fua, released);
  }

  private async writeSplit(offset: number, buf: Buffer, fua: boolean, released?: () => void): Promise<void> {
    const wire = fua && this.has(TxFlag.SEND_FUA) ? CmdFlag.FUA : 0;
    const pieces = Math.ceil(buf.length / this.maxIo);
    let unsent = pieces;
    // Released once every piece is out.
    const sent = released && (pieces === 1 ? released : () => { if (--unsent === 0) released(); });
    await this.split(offset, buf.length, this.maxIo, (c, at, len) =>
      c.write(at, len === buf.length ? buf : buf.subarray(at - offset, at - offset + len), wire, sent));
    if (fua && !wire) await this.doFlush();
  }

  protected override async doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    if (!this.has(TxFlag.SEND_WRITE_ZEROES)) {
      if (flags & Req.NO_FALLBACK) throw new BlockError('ENOTSUP', 'NBD server does not support write zeroes');
      return super.doWriteZeroes(offset, length, flags);
    }
    if ((flags & Req.NO_FALLBACK) && !this.has(TxFlag.SEND_FAST_ZERO)) {
      throw new BlockError('ENOTSUP', 'NBD server does not support fast zeroing');
    }
    const a = this.align;
    const start = roundUp(offset, a);
    const end = Math.max(start, (offset + length) - ((offset + length) % a));
    if (start !== offset || end !== offset + length) {
      if (flags & Req.NO_FALLBACK) throw new BlockError('ENOTSUP', 'unaligned fast zeroing is not supported');
      // Unaligned edges become ordinary writes of zeroes.
      const edge = Buffer.alloc(a);
      if (start > offset) await this.doWrite(offset, edge.subarray(0, Math.min(start, offset + length) - offset), flags & Req.FUA);
      if (end < offset + length && end >= start) await this.doWrite(end, edge.subarray(0, offset + length - end), flags & Req.FUA);
      if (end <= start) return;
    }
    let wire = flags & Req.MAY_UNMAP ? 0 : CmdFlag.NO_HOLE;
    if (flags & Req.NO_FALLBACK) wire |= CmdFlag.FAST_ZERO;
    const fua = (flags & Req.FUA) !== 0;
    if (fua && this.has(TxFlag.SEND_FUA)) wire |= CmdFlag.FUA;
    await this.split(start, end - start, this.maxIo, (c, at, len) => c.writeZeroes(at, len, wire));
    if (fua && !this.has(TxFlag.SEND_FUA)) await this.doFlush();
  }

  /** Discard is advisory: unaligned edges are left alone. */
  protected override async doDiscard(offset: number, length: number): Promise<void> {
    if (!this.has(TxFlag.SEND_TRIM)) return;
    const a = this.align;
    const start = roundUp(offset, a);
    const end = (offset + length) - ((offset + length) % a);
    if (end <= start) return;
    await this.split(start, end - start, MAX_U32 - (MAX_U32 % Math.max(a, 512)), (c, at, len) => c.trim(at, len));
  }

  protected async doFlush(): Promise<void> {
    if (!this.has(TxFlag.SEND_FLUSH)) return;
    await this.conn.run((c) => c.flush());
  }

  // ----------------------------------------------------------- block status

  protected override async doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    const a = this.align;
    const everything = { length, flags: Status.DATA | Status.ALLOCATED, offset: -1 };
    if (offset % a !== 0) return { ...everything, length: Math.min(length, a - (offset % a)) };
    let want = Math.min(length, MAX_U32 - (MAX_U32 % a));
    if (want % a !== 0 && offset + want !== this.size) want -= want % a;
    if (want === 0) want = Math.min(length, a);
    // Context ids are per connection: ask the connection the request goes out on.
    const pairs = await this.conn.run(async (c) => {
      const id = c.info.contexts.get(META_BASE_ALLOCATION);
      if (id === undefined) return null;
      const extents = await c.blockStatus(offset, want, CmdFlag.REQ_ONE);
      const found = extents.get(id);
      if (!found || found.length < 2) throw new BlockError('EIO', 'NBD server sent no base:allocation extent');
      return found;
    });
    if (pairs === null) return everything;
    // Servers may send a longer or unaligned extent; clamp as QEMU does.
    const n = Math.min(pairs[0]!, want);
    const state = pairs[1]!;
    let flags = Status.ALLOCATED;
    if (!(state & StateFlag.HOLE)) flags |= Status.DATA;
    if (state & StateFlag.ZERO) flags |= Status.ZERO;
    return { length: n, flags, offset: -1 };
  }

  protected override async doClose(): Promise<void> {
    await this.conn.close();
  }

  // ---------------------------------------------------------------- helpers

  /** Issues `op` for each piece of at most `max` bytes, all in flight together. */
  private split(offset: number, length: number, max: number, op: (c: NbdClient, at: number, len: number) => Promise<void>): Promise<void> {
    if (length <= max) return this.conn.run((c) => op(c, offset, length));
    const parts: Array<Promise<void>> = [];
    for (let at = offset; at < offset + length; at += max) {
      const len = Math.min(max, offset + length - at);
      parts.push(this.conn.run((c) => op(c, at, len)));
    }
    return Promise.all(parts).then(() => undefined);
  }
}

function roundUp(n: number, a: number): number {
  const r = n % a;
  return r === 0 ? n : n + a - r;
}

// ------------------------------------------------------------------ options

function readAddress(o: OptionReader): { address: SocketAddress; exportName: string | undefined } {
  const server = o.take('server');
  const host = o.optString('host');
  const port = o.optString('port');
  const path = o.optString('path');
  const filename = o.optString('filename');
  const legacy = host !== undefined || port !== undefined || path !== undefined;
  if (filename !== undefined) {
    if (server !== undefined || legacy) throw new BlockError('EINVAL', 'No host or path may be given with an NBD URI filename');
    const parsed = parseNbdUri(filename);
    if (!parsed) throw new BlockError('EINVAL', `Invalid NBD URI '${filename}'`);
    return parsed;
  }
  if (server !== undefined) {
    if (legacy) throw new BlockError('EINVAL', "Cannot use 'server' and path/host at the same time");
    if (!isDict(server)) throw new BlockError('EINVAL', "Invalid parameter type for 'server', expected: object");
    return { address: readSocketAddress(new OptionReader(server, 'server.')), exportName: undefined };
  }
  if (path !== undefined) {
    if (host !== undefined || port !== undefined) throw new BlockError('EINVAL', 'path and host may not be used at the same time');
    return { address: { type: 'unix', path }, exportName: undefined };
  }
  if (host === undefined) throw new BlockError('EINVAL', "Parameter 'server' is missing");
  return { address: { type: 'inet', host, port: port ?? '10809' }, exportName: undefined };
}

export const nbdDriver: DriverDefinition = {
  name: 'nbd',
  kind: 'protocol',
  async open(ctx: OpenContext): Promise<BlockNode> {
    const o = ctx.options;
    if (o.has('tls-creds') || o.has('tls-hostname')) {
      throw new BlockError('ENOTSUP', 'TLS is not supported by the nbd driver (tls-creds)');
    }
    if (o.has('x-dirty-bitmap')) {
      throw new BlockError('ENOTSUP', 'x-dirty-bitmap is not supported by the nbd driver');
    }
    const { address, exportName: fromUri } = readAddress(o);
    const exportName = o.optString('export') ?? fromUri ?? '';
    const reconnectDelay = o.optInt('reconnect-delay', 0, 3600) ?? 0;
    const openTimeout = o.optInt('open-timeout', 0, 3600) ?? 0;
    const maxInFlight = o.optInt('max-in-flight', 1, 1024) ?? 16;
    const log = rootLogger.child({ component: 'nbd-client', ...(ctx.nodeName ? { node: ctx.nodeName } : {}), server: describe(address), export: exportName });
    const conn = await ReconnectingClient.open({
      address,
      client: { exportName, maxInFlight, logger: log },
      reconnectDelayMs: reconnectDelay * 1000,
      openTimeoutMs: openTimeout * 1000,
      log,
    });
    if ((conn.info.txFlags & TxFlag.READ_ONLY) && !ctx.readOnly) {
      await conn.close();
      throw new BlockError('EROFS', 'NBD export is read-only');
    }
    return new NbdNode(ctx.nodeName, ctx.readOnly, conn, exportName);
  },
};
