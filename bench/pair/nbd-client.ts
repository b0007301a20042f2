/**
 * A small NBD client for the harness: fixed-newstyle handshake with
 * NBD_OPT_GO, simple replies only, READ/WRITE/FLUSH/DISC, several requests
 * in flight. It writes the known patterns the data checks model, and it
 * times the first write accepted after a failover from inside the harness
 * (spawning a tool there would measure process start-up instead).
 *
 * It is independent of colo-blk's own NBD code on purpose: a benchmark of
 * colo-blk should not be checked with colo-blk.
 */
import * as net from 'node:net';

const NBDMAGIC = Buffer.from('NBDMAGIC');
const IHAVEOPT = 0x49484156454f5054n;
const OPT_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const INFO_EXPORT = 0;
const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const CMD_FLUSH = 3;
/** Requests are cut into pieces no server refuses (QEMU's limit is 32 MiB). */
const MAX_REQUEST = 4 << 20;
const MAX_IN_FLIGHT = 8;

export interface NbdTarget {
  host: string;
  port: number;
  name: string;
}

export function parseNbdUri(uri: string): NbdTarget {
  const m = /^nbd:\/\/([^/:]+|\[[^\]]+\]):(\d+)\/?(.*)$/.exec(uri);
  if (!m) throw new Error(`not an nbd://HOST:PORT/NAME URI: ${uri}`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]), name: decodeURIComponent(m[3] ?? '') };
}

interface Pending {
  cookie: bigint;
  readLength: number;
  resolve(data: Buffer | null): void;
  reject(err: Error): void;
}

/** Reads exact byte counts from a socket that delivers arbitrary chunks. */
class ByteQueue {
  private chunks: Buffer[] = [];
  private size = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  get length(): number {
    return this.size;
  }

  take(n: number): Buffer {
    if (n > this.size) throw new Error('ByteQueue underflow');
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.size -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.size -= n;
    return out;
  }
}

export class NbdConnection {
  private readonly queue = new ByteQueue();
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private failure: Error | null = null;
  private transmission = false;
  /** The reply whose header was read and whose data has not fully arrived. */
  private current: { p: Pending; error: number } | null = null;
  private slotWaiters: Array<() => void> = [];
  private closing: Promise<void> | null = null;

  private constructor(private readonly socket: net.Socket, readonly size: number, readonly flags: number) {}

  static async connect(uri: string, timeoutMs = 10_000): Promise<NbdConnection> {
    const t = parseNbdUri(uri);
    const socket = net.connect(t.port, t.host);
    socket.setNoDelay(true);
    const queue = new ByteQueue();
    let wake: (() => void) | null = null;
    let failed: Error | null = null;
    const onData = (c: Buffer): void => { queue.push(c); wake?.(); };
    const onError = (e: Error): void => { failed = e; wake?.(); };
    const onClose = (): void => { failed ??= new Error('connection closed during the NBD handshake'); wake?.(); };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    const deadline = Date.now() + timeoutMs;
    const need = async (n: number): Promise<Buffer> => {
      while (queue.length < n) {
        if (failed) throw failed;
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`NBD handshake with ${uri} timed out`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => { clearTimeout(timer); wake = null; resolve(); };
        });
      }
      return queue.take(n);
    };
    try {
      const hello = await need(18);
      if (!hello.subarray(0, 8).equals(NBDMAGIC) || hello.readBigUInt64BE(8) !== IHAVEOPT) {
        throw new Error(`${uri} is not a fixed-newstyle NBD server`);
      }
      const serverFlags = hello.readUInt16BE(16);
      if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) throw new Error(`${uri} lacks fixed newstyle negotiation`);
      const clientFlags = Buffer.alloc(4);
      clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES));
      const name = Buffer.from(t.name);
      const opt = Buffer.alloc(16 + 4 + name.length + 2);
      opt.writeBigUInt64BE(IHAVEOPT, 0);
      opt.writeUInt32BE(OPT_GO, 8);
      opt.writeUInt32BE(4 + name.length + 2, 12);
      opt.writeUInt32BE(name.length, 16);
      name.copy(opt, 20);
      opt.writeUInt16BE(0, 20 + name.length);
      socket.write(Buffer.concat([clientFlags, opt]));
      let size = -1;
      let flags = 0;
      for (;;) {
        const head = await need(20);
        if (head.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new Error(`${uri}: bad option reply magic`);
        const type = head.readUInt32BE(12);
        const data = await need(head.readUInt32BE(16));
        if (type & 0x80000000) {
          throw new Error(`${uri}: export '${t.name}' refused (NBD_REP_ERR ${type & 0x7fffffff}${data.length ? `: ${data.toString()}` : ''})`);
        }
        if (type === REP_INFO && data.length >= 12 && data.readUInt16BE(0) === INFO_EXPORT) {
          size = Number(data.readBigUInt64BE(2));
          flags = data.readUInt16BE(10);
        } else if (type === REP_ACK) {
          break;
        }
      }
      if (size < 0) throw new Error(`${uri}: the server sent no export size`);
      socket.removeListener('data', onData);
      socket.removeListener('error', onError);
      socket.removeListener('close', onClose);
      const conn = new NbdConnection(socket, size, flags);
      if (queue.length > 0) conn.onData(queue.take(queue.length));
      socket.on('data', (c: Buffer) => conn.onData(c));
      socket.on('error', (e) => conn.fail(e));
      socket.on('close', () => conn.fail(new Error(`NBD connection to ${uri} closed`)));
      conn.transmission = true;
      return conn;
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  /** Writes `data` at `offset`, in pieces, several in flight. */
  async write(offset: number, data: Buffer): Promise<void> {
    const parts: Array<Promise<unknown>> = [];
    for (let at = 0; at < data.length; at += MAX_REQUEST) {
      await this.slot();
      const piece = data.subarray(at, Math.min(at + MAX_REQUEST, data.length));
      parts.push(this.request(CMD_WRITE, offset + at, piece.length, piece, 0));
    }
    await Promise.all(parts);
  }

  /** Writes `length` bytes of the byte `pattern` at `offset` (qemu-io's `write -P`). */
  async writePattern(offset: number, length: number, pattern: number): Promise<void> {
    const piece = Buffer.alloc(Math.min(length, MAX_REQUEST), pattern);
    const parts: Array<Promise<unknown>> = [];
    for (let at = 0; at < length; at += MAX_REQUEST) {
      await this.slot();
      const n = Math.min(MAX_REQUEST, length - at);
      parts.push(this.request(CMD_WRITE, offset + at, n, piece.subarray(0, n), 0));
    }
    await Promise.all(parts);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    const parts: Array<Promise<unknown>> = [];
    for (let at = 0; at < length; at += MAX_REQUEST) {
      await this.slot();
      const n = Math.min(MAX_REQUEST, length - at);
      const dst = at;
      parts.push(this.request(CMD_READ, offset + at, n, null, n).then((d) => { d!.copy(out, dst); }));
    }
    await Promise.all(parts);
    return out;
  }

  async flush(): Promise<void> {
    await this.request(CMD_FLUSH, 0, 0, null, 0);
  }

  /** Sends NBD_CMD_DISC after the requests in flight and closes; later calls return the same promise. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (!this.failure) {
        while (this.pending.size > 0) await this.slot(1);
        const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
        this.socket.end(this.header(CMD_DISC, this.nextCookie++, 0, 0));
        await closed;
      }
      this.socket.destroy();
    })();
    return this.closing;
  }

  private slot(max = MAX_IN_FLIGHT): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.pending.size < max) return Promise.resolve();
    return new Promise<void>((resolve) => this.slotWaiters.push(resolve)).then(() => this.slot(max));
  }

  private header(type: number, cookie: bigint, offset: number, length: number): Buffer {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    return h;
  }

  private request(type: number, offset: number, length: number, payload: Buffer | null, readLength: number): Promise<Buffer | null> {
    if (this.failure) return Promise.reject(this.failure);
    const cookie = this.nextCookie++;
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { cookie, readLength, resolve, reject });
      this.socket.cork();
      this.socket.write(this.header(type, cookie, offset, length));
      if (payload) this.socket.write(payload);
      this.socket.uncork();
    });
  }

  private onData(chunk: Buffer): void {
    this.queue.push(chunk);
    for (;;) {
      if (!this.current) {
        if (this.queue.length < 16) return;
        const h = this.queue.take(16);
        if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) {
          this.fail(new Error(`unexpected NBD reply magic 0x${h.readUInt32BE(0).toString(16)}`));
          return;
        }
        const cookie = h.readBigUInt64BE(8);
        const p = this.pending.get(cookie);
        if (!p) {
          this.fail(new Error(`NBD reply for unknown cookie ${cookie}`));
          return;
        }
        this.current = { p, error: h.readUInt32BE(4) };
      }
      const { p, error } = this.current;
      const dataLength = error === 0 ? p.readLength : 0;
      if (this.queue.length < dataLength) return;
      const data = dataLength > 0 ? Buffer.from(this.queue.take(dataLength)) : null;
      this.current = null;
      this.pending.delete(p.cookie);
      if (error !== 0) p.reject(new Error(`NBD request failed with errno ${error}`));
      else p.resolve(data);
      const waiters = this.slotWaiters.splice(0);
      for (const w of waiters) w();
    }
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    for (const w of this.slotWaiters.splice(0)) w();
    if (this.transmission) this.socket.destroy();
  }
}

/** Waits until an NBD server completes a handshake for `uri` (a bare TCP probe upsets qemu-nbd's log). */
export async function waitForNbd(uri: string, timeoutMs = 15_000, alive: () => boolean = () => true): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 10; ; delay = Math.min(delay * 2, 200)) {
    try {
      const c = await NbdConnection.connect(uri, 2000);
      await c.close();
      return;
    } catch (err) {
      if (!alive()) throw new Error(`the server for ${uri} exited before it answered`);
      if (Date.now() + delay > deadline) throw new Error(`${uri} did not answer within ${timeoutMs} ms: ${(err as Error).message}`);
      // Bounded poll: a server process has no readiness event the harness can wait on.
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}
