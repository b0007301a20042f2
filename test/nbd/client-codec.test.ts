import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { ChunkType, Cmd, Opt, Rep } from '../../src/nbd/constants.js';
import {
  ClientDecoder, encodeClientFlags, encodeInfoRequest, encodeMetaContextRequest, encodeOption, encodeRequest,
  type ClientFrame, type ReplyTargets,
} from '../../src/nbd/client-codec.js';
import { NbdProtocolError } from '../../src/nbd/protocol-error.js';
import {
  encodeBlockStatusChunk, encodeErrorChunk, encodeExportNameReply, encodeGreeting, encodeHoleChunk, encodeNoneChunk,
  encodeOptionReply, encodeSimpleReply, writeDataChunkPrefix,
} from '../../src/nbd/server-codec.js';
import { goData, metaData, option, request, splits } from './wire.js';

/** Requests by cookie (low half): reads have a destination buffer. */
class Targets implements ReplyTargets {
  readonly reads = new Map<number, { offset: number; dest: Buffer }>();
  simpleTarget(_hi: number, lo: number): Buffer | null | undefined {
    if (lo === 0xdead) return undefined;
    return this.reads.get(lo)?.dest ?? null;
  }
  dataTarget(_hi: number, lo: number, offset: number, length: number): Buffer | undefined {
    const r = this.reads.get(lo);
    if (!r) return undefined;
    const rel = offset - r.offset;
    if (rel < 0 || rel + length > r.dest.length) return undefined;
    return r.dest.subarray(rel, rel + length);
  }
}

function dataChunk(done: boolean, cookie: number, offset: number, data: Buffer): Buffer {
  const b = Buffer.alloc(28 + data.length);
  data.copy(b, 28);
  writeDataChunkPrefix(b, 0, done, 0, cookie, offset, data.length);
  return b;
}

/**
 * Decodes like the client does: each chunk goes through one reused read
 * buffer (scribbled over after every push), so a view that escaped would show.
 */
function decode(chunks: Buffer[], targets: Targets, setup: (d: ClientDecoder) => void): ClientFrame[] {
  const d = new ClientDecoder(targets);
  setup(d);
  const out: ClientFrame[] = [];
  const reused = Buffer.alloc(4096);
  for (const c of chunks) {
    c.copy(reused);
    d.push(reused.subarray(0, c.length), true);
    for (let f = d.next(); f; f = d.next()) out.push(f);
    d.detach();
    reused.fill(0xee);
  }
  return out;
}

test('handshake replies decode the same however the stream is cut', () => {
  const stream = Buffer.concat([
    encodeGreeting(),
    encodeOptionReply(Opt.STRUCTURED_REPLY, Rep.ACK),
    encodeOptionReply(Opt.SET_META_CONTEXT, Rep.META_CONTEXT, Buffer.from('\0\0\0\0base:allocation')),
    encodeOptionReply(Opt.GO, Rep.ERR_UNSUP, Buffer.from('nope')),
  ]);
  for (const chunks of splits(stream)) {
    assert.deepEqual(decode(chunks, new Targets(), () => undefined), [
      { kind: 'greeting', flags: 3 },
      { kind: 'option-reply', option: Opt.STRUCTURED_REPLY, type: Rep.ACK, data: Buffer.alloc(0) },
      { kind: 'option-reply', option: Opt.SET_META_CONTEXT, type: Rep.META_CONTEXT, data: Buffer.from('\0\0\0\0base:allocation') },
      { kind: 'option-reply', option: Opt.GO, type: Rep.ERR_UNSUP, data: Buffer.from('nope') },
    ]);
  }
});

test('the EXPORT_NAME answer is read with and without the 124 zeroes', () => {
  for (const noZeroes of [true, false]) {
    const stream = encodeExportNameReply(1 << 20, 0x0d6d, noZeroes);
    for (const chunks of splits(stream)) {
      const frames = decode(chunks, new Targets(), (d) => d.expectExportInfo(noZeroes));
      assert.deepEqual(frames, [{ kind: 'export-info', size: 1 << 20, flags: 0x0d6d }]);
    }
  }
});

test('simple and structured replies, interleaved across cookies, land in place however cut', () => {
  const a = Buffer.from('A'.repeat(40));
  const b = Buffer.from('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb');
  const stream = Buffer.concat([
    dataChunk(false, 1, 1000 + 20, a.subarray(20)),
    encodeSimpleReply(0, 0, 7), // a write
    dataChunk(false, 2, 0, b.subarray(0, 10)),
    encodeHoleChunk(false, 0, 2, 10, 10),
    dataChunk(true, 1, 1000, a.subarray(0, 20)),
    encodeBlockStatusChunk(true, 0, 3, 0, [4096, 3]),
    dataChunk(false, 2, 20, b.subarray(20)),
    encodeNoneChunk(0, 2),
    encodeErrorChunk(0, 4, 28, 'no space'),
  ]);
  for (const chunks of splits(stream)) {
    const t = new Targets();
    t.reads.set(1, { offset: 1000, dest: Buffer.alloc(40) });
    t.reads.set(2, { offset: 0, dest: Buffer.alloc(30, 0xff) });
    const frames = decode(chunks, t, (d) => d.startTransmission());
    assert.deepEqual(frames.map((f) => (f.kind === 'chunk' ? [f.cookieLo, f.type, f.flags, f.offset, f.length] : [f.kind])), [
      [1, ChunkType.OFFSET_DATA, 0, 1020, 20],
      ['simple'],
      [2, ChunkType.OFFSET_DATA, 0, 0, 10],
      [2, ChunkType.OFFSET_HOLE, 0, 10, 10],
      [1, ChunkType.OFFSET_DATA, 1, 1000, 20],
      [3, ChunkType.BLOCK_STATUS, 1, 0, 12],
      [2, ChunkType.OFFSET_DATA, 0, 20, 10],
      [2, ChunkType.NONE, 1, 0, 0],
      [4, ChunkType.ERROR, 1, 0, 14],
    ]);
    assert.ok(t.reads.get(1)!.dest.equals(a));
    const bs = t.reads.get(2)!.dest;
    assert.ok(bs.subarray(0, 10).equals(b.subarray(0, 10)) && bs.subarray(20).equals(b.subarray(20)));
    const err = frames[8] as { payload: Buffer };
    assert.equal(err.payload.readUInt32BE(0), 28);
  }
});

test('a simple READ reply streams its data into the destination', () => {
  const data = Buffer.from('hello, simple world');
  const stream = Buffer.concat([encodeSimpleReply(0, 0, 5), data, encodeSimpleReply(5, 0, 6)]);
  for (const chunks of splits(stream)) {
    const t = new Targets();
    t.reads.set(5, { offset: 0, dest: Buffer.alloc(data.length) });
    t.reads.set(6, { offset: 0, dest: Buffer.alloc(8) });
    const frames = decode(chunks, t, (d) => d.startTransmission());
    assert.deepEqual(frames, [
      { kind: 'simple', error: 0, cookieHi: 0, cookieLo: 5 },
      { kind: 'simple', error: 5, cookieHi: 0, cookieLo: 6 },
    ]);
    assert.ok(t.reads.get(5)!.dest.equals(data));
  }
});

test('replies that break the protocol raise NbdProtocolError', () => {
  const t = new Targets();
  t.reads.set(1, { offset: 0, dest: Buffer.alloc(10) });
  const cases: Array<[string, Buffer, (d: ClientDecoder) => void]> = [
    ['oldstyle', Buffer.concat([Buffer.from('NBDMAGIC'), Buffer.from('00420281861253', 'hex').subarray(0, 7), Buffer.alloc(11)]), () => undefined],
    ['not nbd', Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n'), () => undefined],
    ['unknown cookie', encodeSimpleReply(0, 0, 0xdead), (d) => d.startTransmission()],
    ['data past the request', dataChunk(true, 1, 5, Buffer.alloc(6)), (d) => d.startTransmission()],
    ['short data chunk', Buffer.from('668e33ef0001000100000000000000010000000400000000', 'hex'), (d) => d.startTransmission()],
    ['bad hole length', Buffer.from('668e33ef000100020000000000000001000000080000000000000000', 'hex'), (d) => d.startTransmission()],
    ['bad magic', Buffer.from('1234567800000000000000000000000000000000', 'hex'), (d) => d.startTransmission()],
  ];
  for (const [what, bytes, setup] of cases) {
    const d = new ClientDecoder(t);
    setup(d);
    d.push(bytes);
    assert.throws(() => { while (d.next()); }, NbdProtocolError, what);
  }
});

test('client encoders produce the exact bytes of the spec', () => {
  assert.equal(encodeClientFlags(3).toString('hex'), '00000003');
  assert.ok(encodeOption(Opt.GO, encodeInfoRequest('disk', [3])).equals(option(Opt.GO, goData('disk', [3]))));
  assert.ok(encodeMetaContextRequest('disk', ['base:allocation']).equals(metaData('disk', ['base:allocation'])));
  const r = encodeRequest(1, Cmd.WRITE, 0x01020304, 9, 2 ** 40 + 7, 512);
  assert.ok(r.equals(request(Cmd.WRITE, 1, 9, 2 ** 40 + 7, 512)));
});

test('fuzz: any server byte stream only ever raises NbdProtocolError', () => {
  fc.assert(fc.property(fc.array(fc.uint8Array({ maxLength: 100 }), { maxLength: 6 }), fc.boolean(), (parts, transmission) => {
    const t = new Targets();
    t.reads.set(1, { offset: 0, dest: Buffer.alloc(64) });
    const d = new ClientDecoder(t, { maxOptionReply: 4096, maxChunkPayload: 4096 });
    if (transmission) d.startTransmission();
    try {
      for (const p of parts) {
        d.push(Buffer.from(p));
        while (d.next());
      }
    } catch (err) {
      if (!(err instanceof NbdProtocolError)) throw err;
    }
  }), { numRuns: 2000 });
});
