/**
 * Bad input at the socket: each case gets the protocol's error or a closed
 * connection, and afterwards the server still serves a well-behaved client
 * and the image is unchanged.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ChunkType, Cmd, CmdFlag, NbdErr, Opt, Rep } from '../../src/nbd/constants.js';
import { assertServesExpected, startServer, type TestServer } from './fixtures.js';
import { RawClient, goData, option, request, u32 } from './wire.js';

async function withServer(fn: (t: TestServer) => Promise<void>, options = {}): Promise<void> {
  const t = await startServer(options);
  try {
    await fn(t);
    await assertServesExpected(t);
  } finally {
    await t.close();
  }
}

test('garbage instead of client flags, a bad option magic, or a bad request magic close the connection', () => withServer(async (t) => {
  const http = await RawClient.connect(t.port);
  await http.read(18);
  http.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  assert.ok(await http.expectClose());

  const badOpt = await RawClient.connect(t.port);
  await badOpt.read(18);
  badOpt.write(Buffer.concat([u32(3), Buffer.from('IHAVEOPX'), u32(Opt.LIST), u32(0)]));
  assert.ok(await badOpt.expectClose());

  const badReq = await RawClient.connect(t.port);
  await badReq.handshake('disk');
  const r = request(Cmd.WRITE, 0, 1, 0, 512, Buffer.alloc(512, 0xee));
  r.writeUInt32BE(0xdeadbeef, 0);
  badReq.write(r);
  assert.ok(await badReq.expectClose());
}));

test('a client that stalls in the middle of the handshake is dropped at the timeout', () => withServer(async (t) => {
  const c = await RawClient.connect(t.port);
  await c.read(18);
  c.write(u32(3));
  c.write(option(Opt.GO, goData('disk')).subarray(0, 10));
  const closed = t.nextDisconnect();
  const ev = await closed;
  assert.equal(ev.conn.phase, 'closed');
  assert.ok(await c.expectClose());
}, { handshakeTimeoutMs: 150 }));

test('out-of-range and malformed requests get the spec errno and the connection goes on', () => withServer(async (t) => {
  const size = t.expected.length;
  const c = await RawClient.connect(t.port);
  await c.handshake('disk');
  const cases: Array<[string, Buffer, number]> = [
    ['write past the end', request(Cmd.WRITE, 0, 1, size - 256, 512, Buffer.alloc(512, 0xee)), NbdErr.ENOSPC],
    ['write-zeroes past the end', request(Cmd.WRITE_ZEROES, 0, 2, size, 1), NbdErr.ENOSPC],
    ['offset near 2^64', request(Cmd.WRITE_ZEROES, 0, 3, 2 ** 64 - 4096, 4096), NbdErr.ENOSPC],
    ['read past the end', request(Cmd.READ, 0, 4, size, 1), NbdErr.EINVAL],
    ['trim past the end', request(Cmd.TRIM, 0, 5, size - 1, 2), NbdErr.EINVAL],
    ['cache past the end', request(Cmd.CACHE, 0, 6, size + 1, 0), NbdErr.EINVAL],
    ['unknown command', request(9, 0, 7, 0, 512), NbdErr.EINVAL],
    ['unknown flag on read', request(Cmd.READ, 0x40, 8, 0, 512), NbdErr.EINVAL],
    ['DF without structured replies', request(Cmd.READ, CmdFlag.DF, 9, 0, 512), NbdErr.EINVAL],
    ['NO_HOLE on a write', request(Cmd.WRITE, CmdFlag.NO_HOLE, 10, 0, 4, Buffer.alloc(4)), NbdErr.EINVAL],
    ['block status without a context', request(Cmd.BLOCK_STATUS, 0, 11, 0, 512), NbdErr.EINVAL],
    ['read longer than the payload limit', request(Cmd.READ, 0, 12, 0, 33 * 1024 * 1024), NbdErr.EINVAL],
  ];
  for (const [what, bytes, errno] of cases) {
    c.write(bytes);
    const r = await c.simpleReply();
    assert.equal(r.magic, 0x67446698, what);
    assert.equal(r.error, errno, what);
  }
  // Zero-length requests are pointless but legal: they succeed and change nothing.
  c.write(Buffer.concat([request(Cmd.WRITE, 0, 50, 4096, 0), request(Cmd.TRIM, 0, 51, 0, 0), request(Cmd.WRITE_ZEROES, 0, 52, size, 0)]));
  const zeros = await c.simpleReplies(3);
  assert.deepEqual([...zeros].map(([k, v]) => [k, v.error]).sort(), [[50, 0], [51, 0], [52, 0]]);
  // Still in sync: a good read comes back right.
  c.write(request(Cmd.READ, 0, 99, 4096, 64));
  const ok = await c.simpleReply(64);
  assert.deepEqual([ok.error, ok.cookie], [0, 99]);
  assert.ok(ok.data.equals(t.expected.subarray(4096, 4160)));
  c.disconnect();
  await c.closed;
}));

test('with structured replies, errors are error chunks; DF reads too long get EOVERFLOW', () => withServer(async (t) => {
  const c = await RawClient.connect(t.port);
  await c.handshake('disk', { structured: true });
  c.write(request(Cmd.READ, CmdFlag.DF, 1, 0, 33 * 1024 * 1024));
  let ch = await c.chunk();
  assert.deepEqual([ch.type, ch.flags, ch.payload.readUInt32BE(0)], [ChunkType.ERROR, 1, NbdErr.EOVERFLOW]);
  c.write(request(Cmd.BLOCK_STATUS, 0, 2, 0, 0));
  ch = await c.chunk();
  assert.deepEqual([ch.type, ch.payload.readUInt32BE(0)], [ChunkType.ERROR, NbdErr.EINVAL]);
  c.write(request(Cmd.READ, 0, 3, 0, 0));
  ch = await c.chunk();
  assert.deepEqual([ch.type, ch.flags, ch.cookie], [ChunkType.NONE, 1, 3], 'a zero-length read is a NONE chunk');
  c.write(request(Cmd.READ, CmdFlag.DF, 4, 100, 70000));
  ch = await c.chunk();
  assert.deepEqual([ch.type, ch.flags, ch.payload.length], [ChunkType.OFFSET_DATA, 1, 8 + 70000]);
  assert.ok(ch.payload.subarray(8).equals(t.expected.subarray(100, 70100)));
  c.destroy();
}));

test('a read-only export refuses writes with EPERM', () => withServer(async (t) => {
  const c = await RawClient.connect(t.port);
  const { flags } = await c.handshake('ro');
  assert.equal(flags & 2, 2, 'READ_ONLY is advertised');
  for (const [i, bytes] of [
    request(Cmd.WRITE, 0, 1, 0, 512, Buffer.alloc(512, 0xee)),
    request(Cmd.WRITE_ZEROES, 0, 2, 0, 512),
    request(Cmd.TRIM, 0, 3, 0, 512),
  ].entries()) {
    c.write(bytes);
    const r = await c.simpleReply();
    assert.deepEqual([r.error, r.cookie], [NbdErr.EPERM, i + 1]);
  }
  c.destroy();
}));

test('an over-long WRITE is drained and answered EINVAL; one beyond the drain cap closes the connection', () => withServer(async (t) => {
  const c = await RawClient.connect(t.port);
  await c.handshake('disk');
  c.write(request(Cmd.WRITE, 0, 1, 0, 96 * 1024, Buffer.alloc(96 * 1024, 0xee)));
  c.write(request(Cmd.READ, 0, 2, 0, 16));
  const r = await c.simpleReply();
  assert.deepEqual([r.error, r.cookie], [NbdErr.EINVAL, 1]);
  const rd = await c.simpleReply(16);
  assert.ok(rd.data.equals(t.expected.subarray(0, 16)), 'the stream stayed in sync');
  c.write(request(Cmd.WRITE, 0, 3, 0, 1024 * 1024));
  assert.ok(await c.expectClose());
}, { maxPayload: 64 * 1024, maxDrain: 128 * 1024 }));

test('a client that vanishes in the middle of a WRITE payload leaves nothing written', () => withServer(async (t) => {
  const c = await RawClient.connect(t.port);
  await c.handshake('disk');
  const disconnected = t.nextDisconnect();
  c.write(request(Cmd.WRITE, 0, 1, 8192, 65536, Buffer.alloc(65536, 0xee)).subarray(0, 28 + 30000));
  await new Promise<void>((resolve) => c.socket.write(Buffer.alloc(0), () => resolve()));
  c.destroy();
  const ev = await disconnected;
  assert.equal(ev.conn.requests, 0);
}));

test('EOF without DISC is normal: requests already sent still take effect', async () => {
  const t = await startServer();
  try {
    const c = await RawClient.connect(t.port);
    await c.handshake('disk');
    const disconnected = t.nextDisconnect();
    const data = Buffer.alloc(4096, 0x42);
    c.write(request(Cmd.WRITE, CmdFlag.FUA, 1, 0, 4096, data));
    c.socket.end();
    const ev = await disconnected;
    assert.equal(ev.conn.requests, 1);
    data.copy(t.expected, 0);
    await assertServesExpected(t);
  } finally {
    await t.close();
  }
});

test('requests run concurrently and are answered as they complete; DISC waits for them', () => withServer(async (t) => {
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  t.node.hook = async (op, offset) => {
    if (op === 'read' && offset === 0) await held;
  };
  const c = await RawClient.connect(t.port);
  await c.handshake('disk');
  c.write(Buffer.concat([request(Cmd.READ, 0, 1, 0, 512), request(Cmd.READ, 0, 2, 4096, 512), request(Cmd.FLUSH, 0, 3, 0, 0)]));
  const early = await c.simpleReplies(2, new Map([[1, 512], [2, 512]]));
  assert.deepEqual([...early.keys()].sort(), [2, 3], 'the held read is overtaken by later requests');
  assert.ok(early.get(2)!.data.equals(t.expected.subarray(4096, 4608)));
  c.write(request(Cmd.DISC, 0, 4, 0, 0));
  release();
  const last = await c.simpleReply(512);
  assert.equal(last.cookie, 1);
  assert.ok(last.data.equals(t.expected.subarray(0, 512)));
  assert.ok(await c.expectClose());
}));

test('errors from the node map to NBD errnos as QEMU maps them', () => withServer(async (t) => {
  const { BlockError } = await import('../../src/block/errors.js');
  const codes = [['ENOSPC', 28], ['EFBIG', 28], ['EROFS', 1], ['EIO', 5], ['ENOMEM', 12], ['ENOMEDIUM', 22], ['ENOTSUP', 95], ['ESHUTDOWN', 108]] as const;
  let next = 0;
  t.node.hook = (op) => {
    if (op === 'write') throw new BlockError(codes[next]![0], 'injected');
  };
  const c = await RawClient.connect(t.port);
  await c.handshake('disk', { structured: true });
  for (next = 0; next < codes.length; next++) {
    c.write(request(Cmd.WRITE, 0, next, 0, 8, Buffer.alloc(8, 0xee)));
    const ch = await c.chunk();
    assert.deepEqual([ch.type, ch.payload.readUInt32BE(0)], [ChunkType.ERROR, codes[next]![1]], codes[next]![0]);
    assert.match(ch.payload.toString('utf8', 6), /injected/);
  }
  c.destroy();
  t.node.hook = () => undefined;
  assert.equal(t.server.getExport('disk')!.stats.errors, codes.length);
}));

test('a client that does not read its replies is paused, not buffered without bound', () => withServer(async (t) => {
  const c = await RawClient.connect(t.port);
  await c.handshake('disk');
  c.socket.pause();
  const n = 400;
  const reqs = Buffer.concat(Array.from({ length: n }, (_, i) => request(Cmd.READ, 0, i, 0, 64 * 1024)));
  c.write(reqs);
  // Wait until the server has stopped answering (its reply queue is full) — a real condition, polled.
  const exp = t.server.getExport('disk')!;
  let last = -1;
  for (let i = 0; i < 200 && exp.stats.requests !== last; i++) {
    last = exp.stats.requests;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(exp.stats.requests < n, `server answered ${exp.stats.requests} of ${n} without the client reading`);
  c.socket.resume();
  for (let i = 0; i < n; i++) {
    const r = await c.simpleReply(64 * 1024);
    assert.equal(r.error, 0);
  }
  c.destroy();
}, { maxQueuedReplyBytes: 1024 * 1024 }));

test('several connections on several exports at once share the node (multi-conn)', () => withServer(async (t) => {
  const a = await t.connect();
  const b = await t.connect();
  const ro = await t.connect({ exportName: 'ro' });
  assert.ok(a.info.txFlags & 0x100, 'CAN_MULTI_CONN');
  const data = Buffer.alloc(65536, 0x77);
  await a.write(65536, data, CmdFlag.FUA);
  const seen = Buffer.alloc(65536);
  await Promise.all([b.read(65536, seen), ro.read(0, Buffer.alloc(4096))]);
  assert.ok(seen.equals(data));
  await assert.rejects(ro.write(0, Buffer.alloc(8)), (err: Error & { code?: string }) => err.code === 'EPERM');
  await b.write(65536, t.expected.subarray(65536, 131072));
  await Promise.all([a.close(), b.close(), ro.close()]);
  assert.equal(t.server.connectionList().length, 0);
}));

test('export removal: safe refuses while in use, hard drops the clients', () => withServer(async (t) => {
  const c = await RawClient.connect(t.port);
  await c.handshake('ro');
  await assert.rejects(t.server.removeExport('ro', 'safe'), /still in use/);
  await t.server.removeExport('ro', 'hard');
  assert.ok(await c.expectClose());
  const probe = await RawClient.connect(t.port);
  await probe.read(18);
  probe.write(Buffer.concat([u32(3), option(Opt.GO, goData('ro'))]));
  const r = await probe.optionReply();
  assert.equal(r.type, Rep.ERR_UNKNOWN);
  probe.destroy();
}));

test('a graceful close does not wait forever for a client that stopped reading', async () => {
  const t = await startServer({ closeTimeoutMs: 200, maxQueuedReplyBytes: 1024 * 1024 });
  const c = await RawClient.connect(t.port);
  await c.handshake('disk');
  c.socket.pause();
  c.write(Buffer.concat(Array.from({ length: 200 }, (_, i) => request(Cmd.READ, 0, i, 0, 256 * 1024))));
  const exp = t.server.getExport('disk')!;
  while (exp.stats.requests === 0) await new Promise((r) => setTimeout(r, 10));
  await t.server.close();
  assert.equal(t.server.connectionList().length, 0);
  c.destroy();
  await t.close();
});

test('max-connections: connections beyond the limit are refused, the others keep working', () => withServer(async (t) => {
  const first = await t.connect();
  const refused = await RawClient.connect(t.port);
  assert.ok(await refused.expectClose(), 'the extra connection is closed at once');
  await first.read(0, Buffer.alloc(512));
  await first.close();
}, { maxConnections: 1 }));
