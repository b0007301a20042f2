/**
 * The client against scripted servers that do legal-but-unusual things
 * (info order, EXPORT_NAME fallback, non-fixed newstyle, replies out of
 * order, unknown errnos, ESHUTDOWN) and illegal ones (bad chunks, short
 * reads, too many contexts), which must fail cleanly with EIO.
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { test } from 'node:test';
import { createGraph } from '../../src/drivers/index.js';
import { NbdNode } from '../../src/drivers/nbd.js';
import { BlockError } from '../../src/block/errors.js';
import { NbdClient } from '../../src/nbd/client.js';
import { ChunkType, Cmd, Info, Opt, Rep } from '../../src/nbd/constants.js';
import {
  encodeBlockStatusChunk, encodeErrorChunk, encodeExportNameReply, encodeGreeting, encodeHoleChunk, encodeOptionReply,
  encodeSimpleReply, writeDataChunkPrefix,
} from '../../src/nbd/server-codec.js';
import { startServer } from './fixtures.js';
import { u16, u32 } from './wire.js';

/** The server side of one scripted connection: read exactly, write freely. */
class Peer {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  private ended = false;

  constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.wake(); });
    socket.on('close', () => { this.ended = true; this.wake(); });
    socket.on('error', () => undefined);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error('client went away');
      await new Promise<void>((r) => this.waiters.push(r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  async option(): Promise<{ code: number; data: Buffer }> {
    const h = await this.read(16);
    return { code: h.readUInt32BE(8), data: await this.read(h.readUInt32BE(12)) };
  }

  async request(): Promise<{ flags: number; type: number; hi: number; lo: number; offset: number; length: number; payload: Buffer }> {
    const h = await this.read(28);
    const type = h.readUInt16BE(6);
    const length = h.readUInt32BE(24);
    return {
      flags: h.readUInt16BE(4), type, hi: h.readUInt32BE(8), lo: h.readUInt32BE(12),
      offset: h.readUInt32BE(16) * 2 ** 32 + h.readUInt32BE(20), length, payload: type === Cmd.WRITE ? await this.read(length) : Buffer.alloc(0),
    };
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  /** Greeting, flags, and answers to options until GO, in a QEMU-like way with a twist from `infos`. */
  async handshake(opts: { size?: number; structured?: boolean; infos?: Buffer[]; contexts?: Array<[number, string]> } = {}): Promise<void> {
    const size = opts.size ?? 1 << 20;
    this.write(encodeGreeting());
    await this.read(4);
    for (;;) {
      const o = await this.option();
      if (o.code === Opt.STRUCTURED_REPLY) {
        this.write(encodeOptionReply(o.code, opts.structured === false ? Rep.ERR_UNSUP : Rep.ACK));
      } else if (o.code === Opt.SET_META_CONTEXT) {
        for (const [id, name] of opts.contexts ?? [[0, 'base:allocation']]) {
          this.write(encodeOptionReply(o.code, Rep.META_CONTEXT, Buffer.concat([u32(id), Buffer.from(name)])));
        }
        this.write(encodeOptionReply(o.code, Rep.ACK));
      } else if (o.code === Opt.GO) {
        const exp = Buffer.concat([u16(Info.EXPORT), u32(0), u32(size), u16(0x0ded)]);
        for (const i of opts.infos ?? [exp]) this.write(encodeOptionReply(o.code, Rep.INFO, i));
        this.write(encodeOptionReply(o.code, Rep.ACK));
        return;
      } else {
        this.write(encodeOptionReply(o.code, Rep.ERR_UNSUP));
      }
    }
  }
}

async function scripted(script: (peer: Peer) => Promise<void>): Promise<{ port: number; done: Promise<void>; close(): void }> {
  let done!: Promise<void>;
  const server = net.createServer((s) => { done = script(new Peer(s)).catch(() => undefined).finally(() => s.destroy()); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  return { port, get done() { return done; }, close: () => server.close() };
}

function connect(port: number): Promise<NbdClient> {
  return NbdClient.connect({ type: 'inet', host: '127.0.0.1', port }, { exportName: 'x' });
}

function dataChunk(done: boolean, hi: number, lo: number, offset: number, data: Buffer): Buffer {
  const b = Buffer.alloc(28 + data.length);
  data.copy(b, 28);
  writeDataChunkPrefix(b, 0, done, hi, lo, offset, data.length);
  return b;
}

const isEIO = (e: Error & { code?: string }): boolean => e.code === 'EIO';

test('infos in any order, unknown info types ignored; reads answered out of order and in pieces', async () => {
  const s = await scripted(async (p) => {
    await p.handshake({
      infos: [
        Buffer.concat([u16(99), Buffer.from('future info')]),
        Buffer.concat([u16(Info.BLOCK_SIZE), u32(1), u32(4096), u32(1 << 20)]),
        Buffer.concat([u16(Info.NAME), Buffer.from('x')]),
        Buffer.concat([u16(Info.EXPORT), u32(0), u32(1 << 20), u16(0x0ded)]),
      ],
    });
    const a = await p.request();
    const b = await p.request();
    // b first, in a hole and a data chunk; then a's data in two reversed chunks.
    p.write(encodeHoleChunk(false, b.hi, b.lo, b.offset, 100));
    p.write(dataChunk(true, b.hi, b.lo, b.offset + 100, Buffer.alloc(b.length - 100, 0xbb)));
    p.write(dataChunk(false, a.hi, a.lo, a.offset + 10, Buffer.alloc(a.length - 10, 0xaa)));
    p.write(dataChunk(true, a.hi, a.lo, a.offset, Buffer.alloc(10, 0xa0)));
    const w = await p.request();
    p.write(encodeSimpleReply(0, w.hi, w.lo)); // QEMU's server answers writes with simple replies
    const e = await p.request();
    p.write(encodeErrorChunk(e.hi, e.lo, 42, 'something new'));
    await p.request();
  });
  const c = await connect(s.port);
  assert.deepEqual([c.info.minBlock, c.info.preferredBlock, c.info.maxBlock], [1, 4096, 1 << 20]);
  const a = Buffer.alloc(50);
  const b = Buffer.alloc(300, 0xff);
  await Promise.all([c.read(1000, a), c.read(5000, b)]);
  assert.ok(a.subarray(0, 10).every((x) => x === 0xa0) && a.subarray(10).every((x) => x === 0xaa));
  assert.ok(b.subarray(0, 100).every((x) => x === 0) && b.subarray(100).every((x) => x === 0xbb));
  await c.write(0, Buffer.alloc(10));
  await assert.rejects(c.flush(), (err: BlockError) => err.code === 'EINVAL' && /something new/.test(err.message),
    'an unknown errno is EINVAL, and the connection goes on');
  c.destroy();
  s.close();
});

test('GO not understood: EXPORT_NAME with the 124 zeroes; a server without fixed newstyle gets EXPORT_NAME at once', async () => {
  for (const fixed of [true, false]) {
    const s = await scripted(async (p) => {
      const greeting = encodeGreeting(fixed ? 1 : 0); // no NO_ZEROES offered
      p.write(greeting);
      const flags = (await p.read(4)).readUInt32BE(0);
      assert.equal(flags, fixed ? 1 : 0, 'client flags mirror the server');
      for (;;) {
        const o = await p.option();
        if (o.code === Opt.EXPORT_NAME) {
          assert.equal(o.data.toString(), 'x');
          p.write(encodeExportNameReply(1 << 20, 0x0d6d, false));
          break;
        }
        p.write(encodeOptionReply(o.code, Rep.ERR_UNSUP));
      }
      const r = await p.request();
      p.write(Buffer.concat([encodeSimpleReply(0, r.hi, r.lo), Buffer.alloc(r.length, 0x42)]));
      await p.request();
    });
    const c = await connect(s.port);
    assert.equal(c.info.viaExportName, true);
    assert.equal(c.info.structured, false);
    const buf = Buffer.alloc(64);
    await c.read(0, buf);
    assert.ok(buf.every((x) => x === 0x42));
    c.destroy();
    s.close();
  }
});

test('replies that break the protocol fail the request and kill the connection with EIO', async () => {
  const cases: Array<[string, (p: Peer, r: Awaited<ReturnType<Peer['request']>>) => void]> = [
    ['a read that claims success without all its data', (p, r) => p.write(dataChunk(true, r.hi, r.lo, r.offset, Buffer.alloc(r.length - 1)))],
    ['a reply for a cookie never sent', (p, r) => p.write(encodeSimpleReply(0, r.hi + 1, r.lo))],
    ['a simple reply to a structured read', (p, r) => p.write(encodeSimpleReply(0, r.hi, r.lo))],
    ['data outside the request', (p, r) => p.write(dataChunk(true, r.hi, r.lo, r.offset + 1, Buffer.alloc(r.length)))],
    ['an unknown non-error chunk type', (p, r) => {
      const b = encodeHoleChunk(true, r.hi, r.lo, r.offset, r.length);
      b.writeUInt16BE(77, 6);
      p.write(b);
    }],
  ];
  for (const [what, reply] of cases) {
    const s = await scripted(async (p) => {
      await p.handshake();
      reply(p, await p.request());
      await p.request().catch(() => undefined);
    });
    const c = await connect(s.port);
    await assert.rejects(c.read(0, Buffer.alloc(16)), isEIO, what);
    await assert.rejects(c.read(0, Buffer.alloc(16)), isEIO, `${what}: later requests too`);
    s.close();
  }
});

test('handshakes that break QEMU\'s rules are refused', async () => {
  const cases: Array<[string, Parameters<Peer['handshake']>[0], RegExp]> = [
    ['two contexts for one query', { contexts: [[0, 'base:allocation'], [1, 'base:allocation']] }, /twice/],
    ['a context nobody asked for', { contexts: [[3, 'qemu:dirty-bitmap:x']] }, /unexpected meta context/],
    ['no NBD_INFO_EXPORT', { infos: [Buffer.concat([u16(Info.NAME), Buffer.from('x')])] }, /omitted NBD_INFO_EXPORT/],
    ['a minimum block size that is not a power of two', {
      infos: [Buffer.concat([u16(Info.BLOCK_SIZE), u32(3), u32(4096), u32(1 << 20)]), Buffer.concat([u16(Info.EXPORT), u32(0), u32(4096), u16(0x0ded)])],
    }, /minimum block size 3/],
    ['a size that is not a multiple of the minimum block', {
      infos: [Buffer.concat([u16(Info.BLOCK_SIZE), u32(512), u32(4096), u32(1 << 20)]), Buffer.concat([u16(Info.EXPORT), u32(0), u32(1000), u16(0x0ded)])],
    }, /not a multiple of the minimum block size/],
  ];
  for (const [what, opts, message] of cases) {
    const s = await scripted((p) => p.handshake(opts));
    await assert.rejects(connect(s.port), message, what);
    s.close();
  }
});

test('block status maps HOLE and ZERO to the block layer and clamps an over-long extent', async () => {
  const s = await scripted(async (p) => {
    await p.handshake({ contexts: [[7, 'base:allocation']] });
    for (const [len, flags] of [[4096, 3], [1 << 30, 0], [512, 2], [512, 1]]) {
      const r = await p.request();
      assert.equal(r.type, Cmd.BLOCK_STATUS);
      assert.equal(r.flags, 8, 'REQ_ONE, as QEMU asks');
      p.write(encodeBlockStatusChunk(true, r.hi, r.lo, 7, [len!, flags!]));
    }
    const flush = await p.request();
    p.write(encodeSimpleReply(0, flush.hi, flush.lo));
    await p.request();
  });
  const g = createGraph();
  const node = await g.open({ driver: 'nbd', server: { type: 'inet', host: '127.0.0.1', port: String(s.port) }, export: 'x' });
  assert.deepEqual(await node.blockStatus(0, 65536), { length: 4096, flags: 2 | 4, offset: -1 }, 'hole+zero: zero, allocated');
  assert.deepEqual(await node.blockStatus(0, 65536), { length: 65536, flags: 1 | 4, offset: -1 }, 'data, clamped');
  assert.deepEqual(await node.blockStatus(0, 65536), { length: 512, flags: 1 | 2 | 4, offset: -1 });
  assert.deepEqual(await node.blockStatus(0, 65536), { length: 512, flags: 4, offset: -1 }, 'a hole that is not known zero');
  await g.closeAll();
  s.close();
});

test('ESHUTDOWN from the server: the client disconnects softly, and with reconnect-delay it comes back', async () => {
  const t = await startServer();
  try {
    let shutdownOnce = true;
    t.node.hook = (op) => {
      if (op === 'write' && shutdownOnce) {
        shutdownOnce = false;
        throw new BlockError('ESHUTDOWN', 'going down');
      }
    };
    const g = createGraph();
    const node = await g.open({ driver: 'nbd', server: { type: 'inet', host: '127.0.0.1', port: String(t.port) }, export: 'disk', 'reconnect-delay': 10 }) as NbdNode;
    const disconnected = t.nextDisconnect();
    await assert.rejects(node.write(0, Buffer.alloc(512, 1)), (e: BlockError) => e.code === 'ESHUTDOWN');
    const ev = await disconnected;
    assert.match(String(ev.conn.phase), /closed/);
    await node.write(0, Buffer.alloc(512, 2));
    const back = Buffer.alloc(512);
    await node.read(0, back);
    assert.ok(back.every((b) => b === 2));
    await g.closeAll();
  } finally {
    await t.close();
  }
});

test('a hole chunk must have a size: zero-length holes are protocol errors', async () => {
  const s = await scripted(async (p) => {
    await p.handshake();
    const r = await p.request();
    p.write(encodeHoleChunk(true, r.hi, r.lo, r.offset, 0));
    await p.request().catch(() => undefined);
  });
  const c = await connect(s.port);
  await assert.rejects(c.read(0, Buffer.alloc(16)), isEIO);
  s.close();
  assert.equal(ChunkType.OFFSET_HOLE, 2);
});

test('fuzz: whatever a server answers, every request settles with a BlockError or success', async () => {
  const fc = (await import('fast-check')).default;
  const replyArb = fc.array(fc.oneof(
    fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
    fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0x8003 }), fc.integer({ min: 0, max: 40 }))
      .map(([cookie, flags, type, len]) => {
        const h = Buffer.alloc(20 + len, 0);
        h.writeUInt32BE(0x668e33ef, 0);
        h.writeUInt16BE(flags & 1, 4);
        h.writeUInt16BE(type, 6);
        h.writeUInt32BE(1, 8);
        h.writeUInt32BE(cookie, 12);
        h.writeUInt32BE(len, 16);
        return h;
      }),
  ), { maxLength: 6 });
  await fc.assert(fc.asyncProperty(replyArb, async (replies) => {
    const s = await scripted(async (p) => {
      await p.handshake();
      for (const r of replies) p.write(r);
      await new Promise<void>((resolve) => p.socket.write(Buffer.alloc(0), () => resolve()));
    });
    const c = await connect(s.port);
    const settled = await Promise.allSettled([
      c.read(0, Buffer.alloc(64)), c.write(0, Buffer.alloc(8)), c.blockStatus(0, 4096), c.flush(),
    ]);
    for (const r of settled) {
      if (r.status === 'rejected') assert.ok(BlockError.is(r.reason), `rejected with ${String(r.reason)}`);
    }
    c.destroy();
    s.close();
  }), { numRuns: 60 });
});

test('a reconnect to an export that changed (size, flags, block sizes) is refused; the same export is accepted', async () => {
  const { tempDir } = await import('../helpers/env.js');
  const { NbdServer } = await import('../../src/nbd/server.js');
  const dir = tempDir();
  const sock = dir.file('r.sock');
  const serverGraph = createGraph();
  const serve = async (size: number): Promise<InstanceType<typeof NbdServer>> => {
    const node = await serverGraph.open({ driver: 'memory', size });
    const server = new NbdServer();
    server.addExport({ name: 'disk', node, writable: true });
    await server.listen({ type: 'unix', path: sock });
    return server;
  };
  const g = createGraph();
  try {
    let server = await serve(1 << 20);
    const node = await g.open({ driver: 'nbd', server: { type: 'unix', path: sock }, export: 'disk', 'reconnect-delay': 1 }) as NbdNode;
    await server.close();
    server = await serve(2 << 20);
    await assert.rejects(node.read(0, Buffer.alloc(512)), isEIO);
    assert.equal(node.connectionState, 'failing', 'the grown export was not taken as the same disk');
    await server.close();
    server = await serve(1 << 20);
    const state = (): string => node.connectionState;
    for (let i = 0; i < 500 && state() !== 'connected'; i++) await new Promise((r) => setTimeout(r, 10));
    await node.read(0, Buffer.alloc(512));
    await g.closeAll();
    await server.close();
  } finally {
    await serverGraph.closeAll();
    dir.cleanup();
  }
});
