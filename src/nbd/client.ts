/**
 * One NBD client connection: connects, negotiates, then runs many requests
 * at once over the socket and matches replies (simple or structured, in any
 * order, chunks of different requests interleaved) to them by cookie.
 *
 * Cookies are opaque to the server; ours carry the request slot in the low
 * half and a sequence number in the high half, so a reply finds its request
 * without a map lookup and a stale or forged cookie is caught.
 *
 * When the connection breaks, every request in flight and every later one
 * fails with ConnectionLostError (EIO); the nbd driver decides whether to
 * reconnect. A reply that breaks the protocol ends the connection the same
 * way, but as a plain EIO: reconnecting to a broken server does not help.
 */
import * as net from 'node:net';
import { BlockError } from '../block/errors.js';
import { rootLogger, type Logger } from '../util/log.js';
import { ChunkType, Cmd, REQUEST_SIZE, ReplyFlag, isErrorChunk } from './constants.js';
import { ClientDecoder, writeRequest, type ChunkFrame, type ClientFrame, type ReplyTargets } from './client-codec.js';
import { clientHandshake, type HandshakeOptions, type NegotiatedExport } from './client-handshake.js';
import { fromNbdErrno } from './errno.js';
import { NbdProtocolError } from './protocol-error.js';
import { readU64 } from './recv-buffer.js';
import { describe, type SocketAddress } from './address.js';

/** The connection broke (EOF, reset, timeout): the request may succeed on a new connection. */
export class ConnectionLostError extends BlockError {
  constructor(message: string) {
    super('EIO', message);
    this.name = 'ConnectionLostError';
  }
}

export interface ClientOptions extends HandshakeOptions {
  /** Requests in flight at once; more wait for a slot. QEMU uses 16. */
  maxInFlight?: number;
  /** Connecting plus negotiating must finish within this time. */
  connectTimeoutMs?: number;
  logger?: Logger;
}

interface Pending {
  seq: number;
  type: number;
  offset: number;
  length: number;
  dest: Buffer | null;
  covered: number;
  error: BlockError | null;
  extents: Map<number, number[]> | null;
  resolve: (p: Pending) => void;
  reject: (err: Error) => void;
}

/** (length, flags) pairs per context id, as the server sent them. */
export type ExtentMap = Map<number, number[]>;

export class NbdClient implements ReplyTargets {
  private negotiated: NegotiatedExport | null = null;
  private readonly slots: Array<Pending | null>;
  private readonly free: number[] = [];
  private readonly slotWaiters: Array<() => void> = [];
  private seq = 1;
  private inFlight = 0;
  private corked = false;
  private failure: BlockError | null = null;
  private handshakeWaiter: { resolve: (f: ClientFrame) => void; reject: (e: Error) => void } | null = null;
  private readonly handshakeQueue: ClientFrame[] = [];
  private readonly decoder: ClientDecoder;
  private resolveClosed!: () => void;
  /** Resolves when the socket has closed, for whatever reason. */
  readonly closed: Promise<void>;
  /** Called once when the connection ends unexpectedly (not after `close`). */
  onLost: ((err: BlockError) => void) | null = null;
  private closing = false;

  private constructor(
    private readonly socket: net.Socket,
    readonly address: SocketAddress,
    maxInFlight: number,
    private readonly log: Logger,
  ) {
    this.slots = new Array<Pending | null>(maxInFlight).fill(null);
    for (let i = maxInFlight - 1; i >= 0; i--) this.free.push(i);
    this.decoder = new ClientDecoder(this);
    this.closed = new Promise((resolve) => { this.resolveClosed = resolve; });
  }

  /** What the handshake settled: size, flags, structured replies, contexts, block sizes. */
  get info(): NegotiatedExport {
    if (!this.negotiated) throw new Error('NBD client used before its handshake finished');
    return this.negotiated;
  }

  /** Connects and negotiates; rejects with a BlockError that says what went wrong. */
  static async connect(address: SocketAddress, options: ClientOptions): Promise<NbdClient> {
    const log = (options.logger ?? rootLogger).child({ component: 'nbd-client', server: describe(address), export: options.exportName });
    const maxInFlight = options.maxInFlight ?? 16;
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > 0xffff) {
      throw new BlockError('EINVAL', 'maxInFlight must be between 1 and 65535');
    }
    // Reads land in one reused buffer, large enough to take a whole reply in a
    // few system calls; the decoder copies what it keeps (see onBytes).
    let client: NbdClient | null = null;
    const onread = {
      buffer: Buffer.allocUnsafe(READ_BUFFER),
      callback: (n: number, buf: Uint8Array): boolean => {
        client?.onBytes(buf as Buffer, n);
        return true;
      },
    };
    const socket = address.type === 'unix'
      ? net.createConnection({ path: address.path, onread })
      : net.createConnection({ host: address.host, port: Number(address.port), onread });
    client = new NbdClient(socket, address, maxInFlight, log);
    const timeoutMs = options.connectTimeoutMs ?? 10_000;
    const timer = setTimeout(() => client.abort(new ConnectionLostError(
      `timed out after ${timeoutMs} ms connecting to ${describe(address)}`)), timeoutMs);
    try {
      await client.start(options);
      return client;
    } catch (err) {
      client.closing = true;
      client.abort(BlockError.is(err) ? err : BlockError.from(err, 'NBD handshake'));
      throw client.failure ?? err;
    } finally {
      clearTimeout(timer);
    }
  }

  private async start(options: ClientOptions): Promise<void> {
    const socket = this.socket;
    socket.setNoDelay(true);
    let connected = false;
    socket.once('connect', () => { connected = true; });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const text = SOCKET_ERRORS[err.code ?? ''] ?? err.message;
      this.abort(new ConnectionLostError(connected
        ? `connection to '${describe(this.address)}' failed: ${text}`
        : `Failed to connect to '${describe(this.address)}': ${text}`));
    });
    socket.on('end', () => this.abort(new ConnectionLostError(`server ${describe(this.address)} closed the connection`)));
    socket.on('close', () => {
      this.abort(new ConnectionLostError(`connection to ${describe(this.address)} closed`));
      this.resolveClosed();
    });
    const negotiated = await clientHandshake({
      send: (data) => socket.write(data),
      nextFrame: () => this.nextHandshakeFrame(),
      expectExportInfo: (noZeroes) => this.decoder.expectExportInfo(noZeroes),
    }, options);
    this.negotiated = negotiated;
    this.decoder.startTransmission();
    this.log.info('nbd-client.connected', {
      size: negotiated.size,
      txFlags: `0x${negotiated.txFlags.toString(16).padStart(4, '0')}`,
      structured: negotiated.structured,
      contexts: [...negotiated.contexts.keys()],
      blockSize: [negotiated.minBlock, negotiated.preferredBlock, negotiated.maxBlock],
    });
  }

  get isOpen(): boolean {
    return this.failure === null;
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  // ------------------------------------------------------------------- requests

  read(offset: number, dest: Buffer, flags = 0): Promise<void> {
    return this.submit(Cmd.READ, flags, offset, dest.length, null, dest).then(noop);
  }

  /** `sent`, if given, is called once `data` is in the kernel's socket buffer (the caller may reuse it from then on). */
  write(offset: number, data: Buffer, flags = 0, sent?: () => void): Promise<void> {
    return this.submit(Cmd.WRITE, flags, offset, data.length, data, null, sent).then(noop);
  }

  writeZeroes(offset: number, length: number, flags = 0): Promise<void> {
    return this.submit(Cmd.WRITE_ZEROES, flags, offset, length, null, null).then(noop);
  }

  trim(offset: number, length: number, flags = 0): Promise<void> {
    return this.submit(Cmd.TRIM, flags, offset, length, null, null).then(noop);
  }

  flush(): Promise<void> {
    return this.submit(Cmd.FLUSH, 0, 0, 0, null, null).then(noop);
  }

  cache(offset: number, length: number): Promise<void> {
    return this.submit(Cmd.CACHE, 0, offset, length, null, null).then(noop);
  }

  /** Extents per context id for [offset, offset+length). */
  async blockStatus(offset: number, length: number, flags = 0): Promise<ExtentMap> {
    const p = await this.submit(Cmd.BLOCK_STATUS, flags, offset, length, null, null);
    return p.extents ?? new Map();
  }

  /** Sends a request with raw fields (tests use it to provoke server errors). */
  raw(type: number, flags: number, offset: number, length: number, payload: Buffer | null = null, dest: Buffer | null = null): Promise<void> {
    return this.submit(type, flags, offset, length, payload, dest).then(noop);
  }

  /** Soft disconnect: waits for requests in flight, sends NBD_CMD_DISC, closes. */
  async close(): Promise<void> {
    if (this.closing) return this.closed;
    this.closing = true;
    while (this.inFlight > 0 && this.failure === null) await this.idle();
    if (this.failure === null) {
      const hdr = Buffer.allocUnsafe(REQUEST_SIZE);
      writeRequest(hdr, 0, 0, Cmd.DISC, 0, 0, 0, 0);
      this.failure = new ConnectionLostError('NBD client closed');
      this.socket.end(hdr);
      const timer = setTimeout(() => this.socket.destroy(), 2000);
      timer.unref();
    } else {
      this.socket.destroy();
    }
    await this.closed;
    this.log.debug('nbd-client.closed', {});
  }

  /** Hard disconnect. */
  destroy(): void {
    this.closing = true;
    this.abort(new ConnectionLostError('NBD client destroyed'));
  }

  private idle(): Promise<void> {
    return new Promise((resolve) => this.slotWaiters.push(resolve));
  }

  private submit(
    type: number, flags: number, offset: number, length: number, payload: Buffer | null, dest: Buffer | null,
    sent?: () => void,
  ): Promise<Pending> {
    if (this.free.length > 0 && this.failure === null) return this.send(type, flags, offset, length, payload, dest, sent);
    return this.submitWhenFree(type, flags, offset, length, payload, dest, sent);
  }

  private async submitWhenFree(
    type: number, flags: number, offset: number, length: number, payload: Buffer | null, dest: Buffer | null,
    sent?: () => void,
  ): Promise<Pending> {
    while (this.free.length === 0 && this.failure === null) await this.idle();
    if (this.failure !== null) throw this.failure;
    return this.send(type, flags, offset, length, payload, dest, sent);
  }

  /** Puts one request on the wire; a slot must be free. */
  private send(
    type: number, flags: number, offset: number, length: number, payload: Buffer | null, dest: Buffer | null,
    sent?: () => void,
  ): Promise<Pending> {
    const slot = this.free.pop()!;
    const seq = this.seq;
    this.seq = (this.seq + 1) >>> 0 || 1;
    return new Promise<Pending>((resolve, reject) => {
      const p: Pending = {
        seq, type, offset, length, dest, covered: 0, error: null, extents: null, resolve, reject,
      };
      this.slots[slot] = p;
      this.inFlight++;
      const hdr = Buffer.allocUnsafe(REQUEST_SIZE);
      writeRequest(hdr, 0, flags, type, seq, slot, offset, length);
      const socket = this.socket;
      if (!this.corked) {
        this.corked = true;
        socket.cork();
        process.nextTick(this.uncork);
      }
      if (payload && payload.length > 0) {
        socket.write(hdr);
        socket.write(payload, sent);
      } else {
        socket.write(hdr, sent);
      }
    });
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private complete(slot: number, p: Pending): void {
    this.slots[slot] = null;
    this.free.push(slot);
    this.inFlight--;
    if (p.error) p.reject(p.error);
    else p.resolve(p);
    if (p.error?.code === 'ESHUTDOWN') this.serverShuttingDown();
    const w = this.slotWaiters.shift();
    if (w) w();
  }

  /**
   * The spec: a client that receives ESHUTDOWN must disconnect softly. New
   * requests fail as if the connection were lost (so a reconnecting driver
   * retries them elsewhere); DISC goes out once nothing is in flight.
   */
  private serverShuttingDown(): void {
    if (this.failure !== null) return;
    this.failure = new ConnectionLostError(`server ${describe(this.address)} is shutting down`);
    this.log.warn('nbd-client.connection-lost', { error: this.failure.message });
    this.onLost?.(this.failure);
    this.closing = true;
    for (const waiter of this.slotWaiters.splice(0)) waiter();
    const disconnect = (): void => {
      if (this.inFlight > 0) {
        this.slotWaiters.push(disconnect);
        return;
      }
      const hdr = Buffer.allocUnsafe(REQUEST_SIZE);
      writeRequest(hdr, 0, 0, Cmd.DISC, 0, 0, 0, 0);
      if (this.socket.writable) this.socket.end(hdr);
      setTimeout(() => this.socket.destroy(), 2000).unref();
    };
    disconnect();
  }

  // -------------------------------------------------------------- ReplyTargets

  /** @internal */
  simpleTarget(cookieHi: number, cookieLo: number): Buffer | null | undefined {
    const p = this.lookup(cookieHi, cookieLo);
    if (p.type !== Cmd.READ) return null;
    if (this.info.structured) throw new NbdProtocolError('simple reply to a READ after structured replies were negotiated');
    return p.dest;
  }

  /** @internal */
  dataTarget(cookieHi: number, cookieLo: number, offset: number, length: number): Buffer | undefined {
    const p = this.lookup(cookieHi, cookieLo);
    if (p.type !== Cmd.READ) throw new NbdProtocolError(`OFFSET_DATA chunk for a ${p.type} request`);
    const rel = offset - p.offset;
    if (rel < 0 || rel + length > p.length) return undefined;
    p.covered += length;
    return p.dest!.subarray(rel, rel + length);
  }

  private lookup(cookieHi: number, cookieLo: number): Pending {
    const p = cookieLo < this.slots.length ? this.slots[cookieLo] : null;
    if (!p || p.seq !== cookieHi) {
      throw new NbdProtocolError(`reply for unknown cookie 0x${cookieHi.toString(16)}${cookieLo.toString(16).padStart(8, '0')}`);
    }
    return p;
  }

  // ------------------------------------------------------------------- replies

  /** @internal Bytes from the socket's reused read buffer: parsed now, leftovers copied before returning. */
  onBytes(buf: Buffer, n: number): void {
    this.decoder.push(buf.subarray(0, n), true);
    try {
      for (let f = this.decoder.next(); f; f = this.decoder.next()) {
        if (this.negotiated === null) this.queueHandshakeFrame(f);
        else this.onReply(f);
      }
      this.decoder.detach();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.log.error('nbd-client.protocol-error', { error: message });
      this.abort(new BlockError('EIO', `NBD protocol error from ${describe(this.address)}: ${message}`));
    }
  };

  private queueHandshakeFrame(f: ClientFrame): void {
    const w = this.handshakeWaiter;
    if (w) {
      this.handshakeWaiter = null;
      w.resolve(f);
    } else {
      this.handshakeQueue.push(f);
    }
  }

  private nextHandshakeFrame(): Promise<ClientFrame> {
    const f = this.handshakeQueue.shift();
    if (f) return Promise.resolve(f);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => { this.handshakeWaiter = { resolve, reject }; });
  }

  private onReply(f: ClientFrame): void {
    if (f.kind === 'simple') {
      const p = this.lookup(f.cookieHi, f.cookieLo);
      if (f.error !== 0) p.error = this.serverError(p, f.error, '');
      else if (p.type === Cmd.BLOCK_STATUS) throw new NbdProtocolError('simple reply to BLOCK_STATUS');
      this.complete(f.cookieLo, p);
      return;
    }
    if (f.kind !== 'chunk') throw new NbdProtocolError(`unexpected ${f.kind} in transmission`);
    const p = this.lookup(f.cookieHi, f.cookieLo);
    this.onChunk(p, f);
    if (f.flags & ReplyFlag.DONE) {
      if (!p.error) this.checkComplete(p);
      this.complete(f.cookieLo, p);
    }
  }

  private onChunk(p: Pending, f: ChunkFrame): void {
    switch (f.type) {
      case ChunkType.NONE:
        if (!(f.flags & ReplyFlag.DONE) || f.payload!.length !== 0) throw new NbdProtocolError('malformed NONE chunk');
        return;
      case ChunkType.OFFSET_DATA:
        return; // copied by dataTarget
      case ChunkType.OFFSET_HOLE: {
        if (p.type !== Cmd.READ) throw new NbdProtocolError('OFFSET_HOLE chunk for a request other than READ');
        const rel = f.offset - p.offset;
        if (f.length === 0 || rel < 0 || rel + f.length > p.length) throw new NbdProtocolError('OFFSET_HOLE chunk outside its request');
        p.dest!.fill(0, rel, rel + f.length);
        p.covered += f.length;
        return;
      }
      case ChunkType.BLOCK_STATUS: {
        if (p.type !== Cmd.BLOCK_STATUS) throw new NbdProtocolError('BLOCK_STATUS chunk for another request');
        const data = f.payload!;
        if (data.length < 12 || (data.length - 4) % 8 !== 0) throw new NbdProtocolError(`BLOCK_STATUS chunk of ${data.length} bytes`);
        const id = data.readUInt32BE(0);
        p.extents ??= new Map();
        if (p.extents.has(id)) throw new NbdProtocolError(`two BLOCK_STATUS chunks for context ${id}`);
        const pairs: number[] = [];
        for (let at = 4; at < data.length; at += 8) {
          const len = data.readUInt32BE(at);
          if (len === 0) throw new NbdProtocolError('zero-length extent');
          pairs.push(len, data.readUInt32BE(at + 4));
        }
        p.extents.set(id, pairs);
        return;
      }
      default: {
        if (!isErrorChunk(f.type)) throw new NbdProtocolError(`unexpected reply chunk type ${f.type}`);
        const data = f.payload!;
        if (data.length < 6) throw new NbdProtocolError('short error chunk');
        const errno = data.readUInt32BE(0);
        const msgLen = data.readUInt16BE(4);
        const tail = f.type === ChunkType.ERROR_OFFSET ? 8 : 0;
        if (errno === 0) throw new NbdProtocolError('error chunk with error 0');
        if (msgLen > data.length - 6 - tail) throw new NbdProtocolError('error chunk message longer than the chunk');
        let message = data.toString('utf8', 6, 6 + msgLen);
        if (f.type === ChunkType.ERROR_OFFSET) message += ` (at offset ${readU64(data, 6 + msgLen)})`;
        // An unknown error type still fails just this request, as the spec allows.
        p.error ??= this.serverError(p, f.type === ChunkType.ERROR || f.type === ChunkType.ERROR_OFFSET ? errno : 22, message);
      }
    }
  }

  private checkComplete(p: Pending): void {
    if (p.type === Cmd.READ && p.covered !== p.length) {
      throw new NbdProtocolError(`server answered ${p.covered} of ${p.length} bytes of a read`);
    }
    if (p.type === Cmd.BLOCK_STATUS && (!p.extents || p.extents.size === 0)) {
      throw new NbdProtocolError('server sent no BLOCK_STATUS chunk');
    }
  }

  private serverError(p: Pending, errno: number, message: string): BlockError {
    const code = fromNbdErrno(errno);
    const what = `${['read', 'write', 'disconnect', 'flush', 'trim', 'cache', 'write zeroes', 'block status'][p.type] ?? 'request'}`;
    return new BlockError(code, `NBD ${what} at offset ${p.offset} length ${p.length} failed${message ? `: ${message}` : ''}`);
  }

  // ------------------------------------------------------------------ failure

  /** Ends the connection; every request in flight and every later one fails with `err`. */
  private abort(err: BlockError): void {
    if (this.failure === null) {
      this.failure = err;
      if (!this.closing) {
        this.log.warn('nbd-client.connection-lost', { error: err.message });
        this.onLost?.(err);
      }
    }
    const failure = this.failure;
    this.decoder.stop();
    if (!this.socket.destroyed) this.socket.destroy();
    for (let i = 0; i < this.slots.length; i++) {
      const p = this.slots[i];
      if (p) {
        this.slots[i] = null;
        this.free.push(i);
        this.inFlight--;
        p.reject(failure);
      }
    }
    const w = this.handshakeWaiter;
    this.handshakeWaiter = null;
    w?.reject(failure);
    for (const waiter of this.slotWaiters.splice(0)) waiter();
  }
}

function noop(): void {}

const READ_BUFFER = 256 * 1024;

const SOCKET_ERRORS: Record<string, string> = {
  ECONNREFUSED: 'Connection refused',
  ECONNRESET: 'Connection reset by peer',
  ENOENT: 'No such file or directory',
  EPIPE: 'Broken pipe',
  ETIMEDOUT: 'Connection timed out',
  EHOSTUNREACH: 'No route to host',
};
