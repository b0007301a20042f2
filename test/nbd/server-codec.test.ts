import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { Cmd, CmdFlag, Opt } from '../../src/nbd/constants.js';
import { NbdProtocolError } from '../../src/nbd/protocol-error.js';
import {
  encodeBlockStatusChunk, encodeErrorChunk, encodeExportNameReply, encodeGreeting, encodeHoleChunk, encodeNoneChunk,
  encodeOptionReply, encodeSimpleReply, ServerDecoder, writeDataChunkPrefix, type ServerFrame,
} from '../../src/nbd/server-codec.js';
import { goData, option, request, splits, u32 } from './wire.js';

const LIMITS = { maxOptionLength: 64, maxPayload: 4096, maxDrain: 8192 };

/** Feeds chunks and pulls frames the way the connection does (switching to transmission after GO). */
function decodeAll(chunks: Buffer[], limits = LIMITS): ServerFrame[] {
  const d = new ServerDecoder(limits);
  const out: ServerFrame[] = [];
  const drain = (): void => {
    for (let f = d.next(); f; f = d.next()) {
      out.push(f.kind === 'request' && f.payload ? { ...f, payload: Buffer.from(f.payload) } : f);
      if (f.kind === 'option' && (f.code === Opt.GO || f.code === Opt.EXPORT_NAME)) d.startTransmission();
    }
  };
  for (const c of chunks) {
    d.push(c);
    drain();
  }
  return out;
}

function req(type: number, flags: number, cookie: number, offset: number, length: number, payload: Buffer | null = null, oversized = false) {
  return { kind: 'request', flags, type, cookieHi: 0x01020304, cookieLo: cookie, offset, length, payload, oversized };
}

test('every client message decodes the same however the stream is cut', () => {
  const payload = Buffer.from('0123456789abcdef'.repeat(4));
  const stream = Buffer.concat([
    u32(3),
    option(Opt.STRUCTURED_REPLY),
    option(Opt.LIST),
    option(Opt.GO, goData('disk', [3, 1])),
    request(Cmd.READ, CmdFlag.DF, 1, 4096, 512),
    request(Cmd.WRITE, CmdFlag.FUA, 2, 2 ** 40 + 7, payload.length, payload),
    request(Cmd.WRITE_ZEROES, CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO, 3, 0, 0xffffffff),
    request(Cmd.BLOCK_STATUS, CmdFlag.REQ_ONE, 4, 512, 1 << 20),
    request(Cmd.TRIM, 0, 5, 0, 4096),
    request(Cmd.FLUSH, 0, 6, 0, 0),
    request(Cmd.CACHE, 0, 7, 0, 10),
    request(Cmd.WRITE, 0, 8, 0, 0),
    request(Cmd.DISC, 0, 9, 0, 0),
  ]);
  const expected = [
    { kind: 'flags', flags: 3 },
    { kind: 'option', code: Opt.STRUCTURED_REPLY, length: 0, data: Buffer.alloc(0) },
    { kind: 'option', code: Opt.LIST, length: 0, data: Buffer.alloc(0) },
    { kind: 'option', code: Opt.GO, length: 14, data: goData('disk', [3, 1]) },
    req(Cmd.READ, CmdFlag.DF, 1, 4096, 512),
    req(Cmd.WRITE, CmdFlag.FUA, 2, 2 ** 40 + 7, payload.length, payload),
    req(Cmd.WRITE_ZEROES, CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO, 3, 0, 0xffffffff),
    req(Cmd.BLOCK_STATUS, CmdFlag.REQ_ONE, 4, 512, 1 << 20),
    req(Cmd.TRIM, 0, 5, 0, 4096),
    req(Cmd.FLUSH, 0, 6, 0, 0),
    req(Cmd.CACHE, 0, 7, 0, 10),
    req(Cmd.WRITE, 0, 8, 0, 0, Buffer.alloc(0)),
    req(Cmd.DISC, 0, 9, 0, 0),
  ];
  let cuts = 0;
  for (const chunks of splits(stream)) {
    assert.deepEqual(decodeAll(chunks), expected, `cut into ${chunks.map((c) => c.length).join('+')}`);
    cuts++;
  }
  assert.equal(cuts, stream.length + 1);
});

test('over-long options are skipped without being kept, and reported with their length', () => {
  const big = Buffer.alloc(1000, 0x41);
  const stream = Buffer.concat([u32(1), option(99, big), option(Opt.ABORT)]);
  for (const chunks of splits(stream)) {
    const frames = decodeAll(chunks);
    assert.deepEqual(frames, [
      { kind: 'flags', flags: 1 },
      { kind: 'option', code: 99, length: 1000, data: null },
      { kind: 'option', code: Opt.ABORT, length: 0, data: Buffer.alloc(0) },
    ]);
  }
});

test('a WRITE beyond the payload limit is drained and flagged; beyond the drain cap it is a protocol error', () => {
  const junk = Buffer.alloc(5000, 7);
  const stream = Buffer.concat([u32(3), option(Opt.GO, goData('')), request(Cmd.WRITE, 0, 1, 0, junk.length, junk), request(Cmd.FLUSH, 0, 2, 0, 0)]);
  for (const chunks of splits(stream)) {
    const frames = decodeAll(chunks);
    assert.deepEqual(frames.slice(2), [req(Cmd.WRITE, 0, 1, 0, 5000, null, true), req(Cmd.FLUSH, 0, 2, 0, 0)]);
  }
  const d = new ServerDecoder(LIMITS);
  d.push(Buffer.concat([u32(3), option(Opt.GO, goData(''))]));
  d.next();
  d.next();
  d.startTransmission();
  d.push(request(Cmd.WRITE, 0, 1, 0, 9000));
  assert.throws(() => d.next(), NbdProtocolError);
});

test('bad magics are protocol errors', () => {
  const d = new ServerDecoder(LIMITS);
  d.push(Buffer.concat([u32(1), Buffer.from('IHAVEOPX'), u32(1), u32(0)]));
  assert.equal(d.next()?.kind, 'flags');
  assert.throws(() => d.next(), /bad option magic/);

  const t = new ServerDecoder(LIMITS);
  t.push(Buffer.concat([u32(1), option(Opt.GO, goData('x'))]));
  t.next();
  t.next();
  t.startTransmission();
  const bad = request(Cmd.READ, 0, 1, 0, 1);
  bad.writeUInt32BE(0x21e41c71, 0);
  t.push(bad);
  assert.throws(() => t.next(), /extended request header/);
});

test('a whole WRITE in one chunk is a view of that chunk; a split one streams into its own buffer', () => {
  const payload = Buffer.alloc(1024, 0x5a);
  const whole = Buffer.concat([request(Cmd.WRITE, 0, 1, 0, 1024, payload)]);
  const d = new ServerDecoder(LIMITS);
  d.push(Buffer.concat([u32(1), option(Opt.GO, goData(''))]));
  d.next();
  d.next();
  d.startTransmission();
  d.push(whole);
  const f = d.next();
  assert.ok(f && f.kind === 'request' && f.payload);
  assert.equal(f.payload.buffer, whole.buffer, 'no copy for a payload inside one chunk');
  d.push(whole.subarray(0, 100));
  assert.equal(d.next(), null);
  assert.ok(d.buffered < 100, 'the partial payload is not held in the receive buffer');
  d.push(whole.subarray(100));
  const g = d.next();
  assert.ok(g && g.kind === 'request' && g.payload!.equals(payload));
});

test('property: reading payload bytes straight into directTarget gives the frames that pushing them gives', () => {
  fc.assert(fc.property(
    fc.array(fc.record({ len: fc.integer({ min: 0, max: 4096 }), seed: fc.integer({ min: 0, max: 255 }), write: fc.boolean() }), { minLength: 1, maxLength: 8 }),
    fc.array(fc.integer({ min: 1, max: 3000 }), { minLength: 1, maxLength: 20 }),
    (reqs, readSizes) => {
      const handshake = Buffer.concat([u32(1), option(Opt.GO, goData(''))]);
      const stream = Buffer.concat([handshake, ...reqs.map((r, i) => r.write
        ? request(Cmd.WRITE, 0, i, 0, r.len, Buffer.alloc(r.len, r.seed))
        : request(Cmd.READ, 0, i, 0, r.len))]);
      // A socket reader: each read fills the direct target when there is one (up to its length), else a fresh chunk.
      const d = new ServerDecoder(LIMITS);
      const out: ServerFrame[] = [];
      let at = 0;
      let k = 0;
      let directBytes = 0;
      while (at < stream.length) {
        const want = readSizes[k++ % readSizes.length]!;
        const target = d.directTarget();
        assert.ok(!target || target.length > 0, 'a direct target is never empty');
        const n = Math.min(want, stream.length - at, target ? target.length : Infinity);
        if (target) {
          stream.copy(target, 0, at, at + n);
          d.pushDirect(n);
          directBytes += n;
        } else {
          d.push(Buffer.from(stream.subarray(at, at + n)));
        }
        at += n;
        for (let f = d.next(); f; f = d.next()) {
          out.push(f.kind === 'request' && f.payload ? { ...f, payload: Buffer.from(f.payload) } : f);
          if (f.kind === 'option' && f.code === Opt.GO) d.startTransmission();
        }
      }
      assert.deepEqual(out, decodeAll([stream]));
      if (directBytes > 0) assert.ok(reqs.some((r) => r.write && r.len > 0));
    },
  ), { numRuns: 300 });
});

test('server encoders produce the exact bytes of the spec', () => {
  assert.equal(encodeGreeting().toString('hex'), '4e42444d41474943' + '49484156454f5054' + '0003');
  assert.equal(encodeOptionReply(Opt.GO, 1).toString('hex'), '0003e889045565a9' + '00000007' + '00000001' + '00000000');
  assert.equal(encodeOptionReply(5, 0x80000001, Buffer.from('no')).toString('hex'),
    '0003e889045565a9' + '00000005' + '80000001' + '00000002' + '6e6f');
  assert.equal(encodeExportNameReply(2 ** 33 + 1, 0x0ded, true).toString('hex'), '0000000200000001' + '0ded');
  assert.equal(encodeExportNameReply(1, 0x0d6d, false).length, 134);
  assert.equal(encodeSimpleReply(22, 0xaabbccdd, 0x11223344).toString('hex'), '67446698' + '00000016' + 'aabbccdd11223344');
  assert.equal(encodeNoneChunk(1, 2).toString('hex'), '668e33ef' + '0001' + '0000' + '0000000100000002' + '00000000');
  assert.equal(encodeHoleChunk(false, 0, 9, 4096, 512).toString('hex'),
    '668e33ef' + '0000' + '0002' + '0000000000000009' + '0000000c' + '0000000000001000' + '00000200');
  assert.equal(encodeErrorChunk(0, 3, 5, 'x').toString('hex'),
    '668e33ef' + '0001' + '8001' + '0000000000000003' + '00000007' + '00000005' + '0001' + '78');
  assert.equal(encodeBlockStatusChunk(true, 0, 4, 1, [65536, 3, 512, 0]).toString('hex'),
    '668e33ef' + '0001' + '0005' + '0000000000000004' + '00000014' + '00000001' + '0001000000000003' + '0000020000000000');
  const data = Buffer.alloc(28 + 3);
  data.write('abc', 28);
  writeDataChunkPrefix(data, 0, true, 0, 8, 1024, 3);
  assert.equal(data.toString('hex'),
    '668e33ef' + '0001' + '0001' + '0000000000000008' + '0000000b' + '0000000000000400' + '616263');
});

/** Memory the decoder holds: its receive buffer plus the payload it is filling. */
function heldBytes(d: ServerDecoder): number {
  const internals = d as unknown as { rb: { capacity: number }; sink: Buffer | null };
  return internals.rb.capacity + (internals.sink?.length ?? 0);
}

test('fuzz: random and mutated streams only ever raise NbdProtocolError, with bounded memory', () => {
  const valid = Buffer.concat([
    u32(3), option(Opt.STRUCTURED_REPLY), option(Opt.GO, goData('disk', [3])),
    request(Cmd.READ, 0, 1, 0, 512), request(Cmd.WRITE, 0, 2, 0, 64, Buffer.alloc(64, 1)), request(Cmd.DISC, 0, 3, 0, 0),
  ]);
  const mutated = fc.tuple(fc.array(fc.tuple(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }), fc.nat(valid.length))
    .map(([edits, cut]) => {
      const b = Buffer.from(valid);
      for (const [i, v] of edits) b[i] = v;
      return [b.subarray(0, cut), b.subarray(cut)];
    });
  const random = fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 6 }).map((parts) => parts.map((p) => Buffer.from(p)));
  const bound = LIMITS.maxOptionLength + 64 * 1024 + LIMITS.maxPayload + 256;
  fc.assert(fc.property(fc.oneof(mutated, random), (chunks) => {
    const d = new ServerDecoder(LIMITS);
    try {
      for (const c of chunks) {
        d.push(c);
        for (let f = d.next(); f; f = d.next()) {
          if (f.kind === 'option' && f.code === Opt.GO) d.startTransmission();
          assert.ok(heldBytes(d) <= bound);
        }
      }
    } catch (err) {
      if (!(err instanceof NbdProtocolError)) throw err;
    }
    assert.ok(heldBytes(d) <= bound, `decoder holds ${heldBytes(d)} bytes`);
  }), { numRuns: 3000 });
});
