/**
 * End-to-end fuzz of the server over real sockets: random handshakes and
 * random requests (any type, flags, offset, length, payload) after them.
 * The server must never fail internally, must keep serving a well-behaved
 * client, and a read-only export must come out unchanged.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { Opt } from '../../src/nbd/constants.js';
import { setLogSink } from '../../src/util/log.js';
import { assertServesExpected, SIZE, startServer } from './fixtures.js';
import { RawClient, goData, metaData, option, request, u32 } from './wire.js';

const offsetArb = fc.oneof(
  fc.integer({ min: 0, max: SIZE }),
  fc.constantFrom(SIZE - 1, SIZE + 1, 2 ** 32, 2 ** 53, 2 ** 64 - 512),
);
const requestArb = fc.record({
  type: fc.oneof(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 0xffff })),
  flags: fc.oneof(fc.constantFrom(0, 1, 2, 4, 8, 16, 0x1f), fc.integer({ min: 0, max: 0xffff })),
  offset: offsetArb,
  length: fc.oneof(fc.integer({ min: 0, max: 8192 }), fc.constantFrom(0, 2 ** 25, 2 ** 32 - 1)),
});
const sessionArb = fc.record({
  structured: fc.boolean(),
  meta: fc.subarray(['base:allocation', 'qemu:allocation-depth', 'base:', 'x-y:z']),
  writable: fc.boolean(),
  requests: fc.array(requestArb, { maxLength: 12 }),
  garbageTail: fc.option(fc.uint8Array({ minLength: 1, maxLength: 40 })),
});

/** Error numbers in a server's transmission stream (after the handshake replies). */
function replyErrors(stream: Buffer, structured: boolean, reads: Map<number, number>): number[] {
  const errors: number[] = [];
  let at = 0;
  // Skip option replies (magic 0x0003e889...) up to the GO's ACK.
  while (at + 20 <= stream.length && stream.readUInt32BE(at) === 0x0003e889) at += 20 + stream.readUInt32BE(at + 16);
  while (at + 16 <= stream.length) {
    const magic = stream.readUInt32BE(at);
    if (magic === 0x67446698) {
      const error = stream.readUInt32BE(at + 4);
      const cookie = stream.readUInt32BE(at + 12);
      if (error) errors.push(error);
      at += 16 + (error === 0 && !structured ? reads.get(cookie) ?? 0 : 0);
    } else if (magic === 0x668e33ef && at + 20 <= stream.length) {
      const type = stream.readUInt16BE(at + 6);
      const len = stream.readUInt32BE(at + 16);
      if (type & 0x8000) errors.push(stream.readUInt32BE(at + 20));
      at += 20 + len;
    } else {
      throw new Error(`unparsable reply stream at ${at}`);
    }
  }
  return errors;
}

test('fuzz: random requests over real sockets never break the server or a read-only image', async () => {
  const t = await startServer({ maxPayload: 64 * 1024, maxDrain: 128 * 1024, handshakeTimeoutMs: 1000 });
  t.server.getExport('disk'); // writable export: the image may change
  const internal: string[] = [];
  setLogSink({ write: (line) => { if (line.includes('internal-error')) internal.push(line); } });
  try {
    await fc.assert(fc.asyncProperty(sessionArb, async (s) => {
      const c = await RawClient.connect(t.port);
      await c.read(18);
      c.write(u32(3));
      if (s.structured) c.write(option(Opt.STRUCTURED_REPLY));
      if (s.meta.length) c.write(option(Opt.SET_META_CONTEXT, metaData(s.writable ? 'disk' : 'ro', s.meta)));
      c.write(option(Opt.GO, goData(s.writable ? 'disk' : 'ro')));
      const reads = new Map<number, number>();
      s.requests.forEach((r, i) => {
        // Writes carry their payload only when it is small enough to be worth sending.
        const payload = r.type === 1 && r.length <= 8192 ? Buffer.alloc(r.length, 0xee) : undefined;
        if (r.type === 1 && !payload) return;
        if (r.type === 0) reads.set(i + 100, r.length);
        c.write(request(r.type, r.flags, i + 100, r.offset, r.length, payload));
      });
      if (s.garbageTail) c.write(Buffer.from(s.garbageTail));
      c.socket.end();
      await c.closed;
      // Nothing here can fail for a reason other than the request itself: never EIO or ENOMEM.
      for (const errno of replyErrors(c.rest(), s.structured, reads)) {
        assert.ok(errno !== 5 && errno !== 12, `server answered errno ${errno}`);
      }
    }), { numRuns: 120 });
    // Wait for every fuzz connection to be gone, then the server must still serve.
    for (let i = 0; i < 500 && t.server.connectionList().length > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(t.server.connectionList().length, 0);
    assert.deepEqual(internal, []);
    const c = await t.connect({ exportName: 'ro' });
    const all = Buffer.alloc(64 * 1024);
    await c.read(0, all);
    await c.close();
  } finally {
    setLogSink({ write: (line) => process.stderr.write(line) });
    await t.close();
  }
});

test('fuzz: the read-only export comes out byte for byte unchanged', async () => {
  const t = await startServer({ maxPayload: 64 * 1024, maxDrain: 128 * 1024 });
  try {
    await fc.assert(fc.asyncProperty(fc.array(requestArb, { maxLength: 16 }), fc.boolean(), async (reqs, structured) => {
      const c = await RawClient.connect(t.port);
      await c.handshake('ro', { structured });
      for (const r of reqs) {
        const payload = r.type === 1 ? Buffer.alloc(Math.min(r.length, 8192), 0xee) : undefined;
        c.write(request(r.type, r.flags, 1, r.offset, payload ? payload.length : r.length, payload));
      }
      c.socket.end();
      await c.closed;
    }), { numRuns: 60 });
    await assertServesExpected(t);
  } finally {
    await t.close();
  }
});
