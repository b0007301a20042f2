/**
 * Test helpers for byte-level NBD: every way to cut a byte string into
 * chunks (the pg-protocol style), hand-built client messages, and a raw
 * socket client that speaks only as much protocol as a test needs, so that
 * it can also speak it badly.
 */
import * as net from 'node:net';
import { Cmd, IHAVEOPT_HI, IHAVEOPT_LO, Opt, REQUEST_MAGIC } from '../../src/nbd/constants.js';
import { writeU64 } from '../../src/nbd/recv-buffer.js';

/** The byte string whole, cut once at every offset, and one byte at a time. */
export function* splits(bytes: Buffer): Generator<Buffer[]> {
  yield [bytes];
  for (let i = 1; i < bytes.length; i++) yield [bytes.subarray(0, i), bytes.subarray(i)];
  if (bytes.length > 1) yield [...bytes].map((b) => Buffer.from([b]));
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n, 0);
  return b;
}

export function str32(text: string): Buffer {
  const raw = Buffer.from(text, 'utf8');
  return Buffer.concat([u32(raw.length), raw]);
}

export function option(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([u32(IHAVEOPT_HI), u32(IHAVEOPT_LO), u32(code), u32(data.length), data]);
}

export function goData(name: string, infos: number[] = []): Buffer {
  return Buffer.concat([str32(name), u16(infos.length), ...infos.map(u16)]);
}

export function metaData(name: string, queries: string[]): Buffer {
  return Buffer.concat([str32(name), u32(queries.length), ...queries.map(str32)]);
}

export function request(type: number, flags: number, cookie: number, offset: number, length: number, payload?: Buffer): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(0x01020304, 8);
  b.writeUInt32BE(cookie, 12);
  writeU64(b, offset, 16);
  b.writeUInt32BE(length >>> 0, 24);
  return payload ? Buffer.concat([b, payload]) : b;
}

export interface SimpleReply {
  magic: number;
  error: number;
  cookie: number;
}

/**
 * A socket that reads exactly what a test asks for. It does the handshake
 * with hand-written bytes (so tests can break it at any point).
 */
export class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    socket.on('end', () => { this.ended = true; this.wake(); });
    socket.on('error', () => { this.ended = true; this.wake(); });
    this.closed = new Promise((resolve) => socket.on('close', () => { this.ended = true; this.wake(); resolve(); }));
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection({ host, port }, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  /** Exactly n bytes, or rejects when the server closed first. */
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`connection closed with ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves true when the server closes the connection without sending more. */
  async expectClose(): Promise<boolean> {
    await this.closed;
    return this.buf.length === 0;
  }

  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(len) };
  }

  /** Greeting + flags + (STRUCTURED_REPLY) + GO. */
  async handshake(exportName: string, opts: { structured?: boolean; meta?: string[] } = {}): Promise<{ size: number; flags: number }> {
    await this.read(18);
    this.write(u32(3));
    if (opts.structured) {
      this.write(option(Opt.STRUCTURED_REPLY));
      await this.optionReply();
      if (opts.meta) {
        this.write(option(Opt.SET_META_CONTEXT, metaData(exportName, opts.meta)));
        for (;;) if ((await this.optionReply()).type === 1) break;
      }
    }
    this.write(option(Opt.GO, goData(exportName)));
    let size = -1;
    let flags = 0;
    for (;;) {
      const r = await this.optionReply();
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) {
        size = r.data.readUInt32BE(2) * 2 ** 32 + r.data.readUInt32BE(6);
        flags = r.data.readUInt16BE(10);
      }
      if (r.type === 1) return { size, flags };
      if (r.type >= 0x80000000) throw new Error(`GO failed: ${r.data.toString()}`);
    }
  }

  async simpleReply(dataLength = 0): Promise<SimpleReply & { data: Buffer }> {
    const h = await this.read(16);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? await this.read(dataLength) : Buffer.alloc(0);
    return { magic: h.readUInt32BE(0), error, cookie: h.readUInt32BE(12), data };
  }

  /** `n` simple replies in whatever order they come; `reads` gives the data length by cookie. */
  async simpleReplies(n: number, reads: Map<number, number> = new Map()): Promise<Map<number, { error: number; data: Buffer }>> {
    const out = new Map<number, { error: number; data: Buffer }>();
    for (let i = 0; i < n; i++) {
      const h = await this.read(16);
      const error = h.readUInt32BE(4);
      const cookie = h.readUInt32BE(12);
      const len = reads.get(cookie) ?? 0;
      out.set(cookie, { error, data: error === 0 && len > 0 ? await this.read(len) : Buffer.alloc(0) });
    }
    return out;
  }

  /** One structured chunk (or a simple reply, flagged by its magic). */
  async chunk(): Promise<{ magic: number; flags: number; type: number; cookie: number; payload: Buffer }> {
    const first = await this.read(4);
    const magic = first.readUInt32BE(0);
    if (magic === 0x67446698) {
      const rest = await this.read(12);
      return { magic, flags: 1, type: -1, cookie: rest.readUInt32BE(8), payload: rest.subarray(0, 4) };
    }
    const h = await this.read(16);
    const len = h.readUInt32BE(12);
    return { magic, flags: h.readUInt16BE(0), type: h.readUInt16BE(2), cookie: h.readUInt32BE(8), payload: await this.read(len) };
  }

  /** Everything received and not yet read. */
  rest(): Buffer {
    const out = this.buf;
    this.buf = Buffer.alloc(0);
    return out;
  }

  disconnect(): void {
    this.write(request(Cmd.DISC, 0, 0, 0, 0));
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }
}
