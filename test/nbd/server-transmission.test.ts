/**
 * What the server does with valid requests: sparse structured reads, block
 * status over a chain, and how command flags reach the block layer.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Req } from '../../src/block/node.js';
import { createGraph } from '../../src/drivers/index.js';
import { NbdClient } from '../../src/nbd/client.js';
import { ChunkType, Cmd, CmdFlag, MetaId, NbdErr } from '../../src/nbd/constants.js';
import { NbdServer } from '../../src/nbd/server.js';
import { tempDir } from '../helpers/env.js';
import { startServer } from './fixtures.js';
import { RawClient, request } from './wire.js';

const K64 = 65536;

/** base (data in clusters 0-3) <- hidden (cluster 2) <- active (cluster 3, zero cluster 5), 1 MiB each. */
async function chainServer() {
  const g = createGraph();
  const base = await g.add({ driver: 'memory', 'node-name': 'base', size: 1 << 20 });
  const hidden = await g.add({ driver: 'memory', 'node-name': 'hidden', backing: 'base' });
  const active = await g.add({ driver: 'memory', 'node-name': 'active', backing: 'hidden' });
  await base.write(0, Buffer.alloc(4 * K64, 0x11));
  await hidden.write(2 * K64, Buffer.alloc(K64, 0x22));
  await active.write(3 * K64, Buffer.alloc(K64, 0x33));
  await active.writeZeroes(5 * K64, K64, Req.MAY_UNMAP);
  const server = new NbdServer();
  server.addExport({ name: 'top', node: active, writable: true, allocationDepth: true });
  const addr = await server.listen({ type: 'inet', host: '127.0.0.1', port: 0 });
  const port = addr.type === 'inet' ? Number(addr.port) : 0;
  return {
    port,
    async close() {
      await server.close();
      await g.closeAll();
    },
  };
}

test('structured reads describe zero ranges as holes, over the whole chain; DF gets one data chunk', async () => {
  const s = await chainServer();
  try {
    const c = await RawClient.connect(s.port);
    await c.handshake('top', { structured: true });
    c.write(request(Cmd.READ, 0, 1, 3 * K64, 4 * K64));
    const chunks = [];
    for (;;) {
      const ch = await c.chunk();
      chunks.push(ch);
      if (ch.flags & 1) break;
    }
    const layout = chunks.map((ch) => [ch.type, ch.payload.readUInt32BE(4), ch.type === ChunkType.OFFSET_HOLE ? ch.payload.readUInt32BE(8) : ch.payload.length - 8]);
    assert.deepEqual(layout, [
      [ChunkType.OFFSET_DATA, 3 * K64, K64], // active's data
      [ChunkType.OFFSET_HOLE, 4 * K64, 3 * K64], // unallocated anywhere, then active's zero cluster, then nothing
    ]);
    assert.ok(chunks[0]!.payload.subarray(8).every((b) => b === 0x33));
    c.write(request(Cmd.READ, CmdFlag.DF, 2, 3 * K64, 4 * K64));
    const df = await c.chunk();
    assert.deepEqual([df.type, df.flags, df.payload.length - 8], [ChunkType.OFFSET_DATA, 1, 4 * K64]);
    assert.ok(df.payload.subarray(8 + K64).every((b) => b === 0));
    c.destroy();
  } finally {
    await s.close();
  }
});

test('block status: base:allocation as QEMU computes it, qemu:allocation-depth 1-based, REQ_ONE gives one extent', async () => {
  const s = await chainServer();
  try {
    const c = await NbdClient.connect({ type: 'inet', host: '127.0.0.1', port: s.port }, {
      exportName: 'top', metaContexts: ['base:allocation', 'qemu:allocation-depth'],
    });
    assert.deepEqual([...c.info.contexts], [['base:allocation', MetaId.BASE_ALLOCATION], ['qemu:allocation-depth', MetaId.ALLOCATION_DEPTH]]);
    const all = await c.blockStatus(0, 1 << 20);
    assert.deepEqual(all.get(MetaId.BASE_ALLOCATION), [4 * K64, 0, 12 * K64, 3]);
    assert.deepEqual(all.get(MetaId.ALLOCATION_DEPTH), [2 * K64, 3, K64, 2, K64, 1, K64, 0, K64, 1, 10 * K64, 0]);
    const one = await c.blockStatus(K64, 3 * K64, CmdFlag.REQ_ONE);
    assert.deepEqual(one.get(MetaId.BASE_ALLOCATION), [3 * K64, 0], 'adjacent data extents merge under REQ_ONE');
    assert.deepEqual(one.get(MetaId.ALLOCATION_DEPTH), [K64, 3]);
    await c.close();
  } finally {
    await s.close();
  }
});

test('command flags reach the block layer: FUA, NO_HOLE, FAST_ZERO, TRIM with FUA flushes; payloads are stable buffers', async () => {
  const t = await startServer();
  try {
    const seen: Array<[string, number]> = [];
    t.node.hook = (op, _o, _l, flags) => { seen.push([op, flags]); };
    const c = await t.connect();
    await c.write(0, Buffer.alloc(512), CmdFlag.FUA);
    await c.writeZeroes(0, 512, CmdFlag.NO_HOLE);
    await c.writeZeroes(0, 512, 0);
    await c.writeZeroes(0, 512, CmdFlag.FAST_ZERO | CmdFlag.FUA);
    await c.trim(0, 512, CmdFlag.FUA);
    await c.cache(0, 512);
    await c.flush();
    assert.deepEqual(seen, [
      ['write', Req.FUA | Req.STABLE_BUFFER],
      ['zero', 0],
      ['zero', Req.MAY_UNMAP],
      ['zero', Req.MAY_UNMAP | Req.NO_FALLBACK | Req.FUA],
      ['discard', 0],
      ['flush', 0],
      ['flush', 0],
    ]);
    await c.close();
    t.server.addExport({ name: 'wt', node: t.node, writable: true, writethrough: true });
    const wt = await t.connect({ exportName: 'wt' });
    seen.length = 0;
    await wt.write(0, Buffer.alloc(512));
    await wt.writeZeroes(0, 512, CmdFlag.NO_HOLE);
    await wt.trim(0, 512);
    assert.deepEqual(seen, [['write', Req.FUA | Req.STABLE_BUFFER], ['zero', Req.FUA], ['discard', 0], ['flush', 0]], 'writethrough makes every write FUA');
    await wt.close();
  } finally {
    await t.close();
  }
});

test('FAST_ZERO that cannot be fast fails with ENOTSUP and changes nothing (unix socket, file node)', async () => {
  const dir = tempDir();
  const g = createGraph();
  const path = dir.file('disk.raw');
  const { writeFileSync, readFileSync } = await import('node:fs');
  writeFileSync(path, Buffer.alloc(1 << 20, 0x5a));
  const node = await g.add({ driver: 'raw', 'node-name': 'disk', file: { driver: 'file', filename: path } });
  const server = new NbdServer();
  server.addExport({ name: 'disk', node, writable: true });
  const addr = await server.listen({ type: 'unix', path: dir.file('nbd.sock') });
  try {
    const c = await NbdClient.connect(addr, { exportName: 'disk' });
    await assert.rejects(c.writeZeroes(4096, 4096, CmdFlag.FAST_ZERO), (e: Error & { code?: string }) => e.code === 'ENOTSUP');
    assert.ok(readFileSync(path).subarray(4096, 8192).every((b) => b === 0x5a));
    await c.writeZeroes(4096, 4096, 0);
    await c.close();
    assert.ok(readFileSync(path).subarray(4096, 8192).every((b) => b === 0));
  } finally {
    await server.close();
    await g.closeAll();
    dir.cleanup();
  }
});

test('ENOTSUP maps to the NBD errno 95 and unknown errno values from a server become EINVAL', async () => {
  const { fromNbdErrno, toNbdErrno } = await import('../../src/nbd/errno.js');
  assert.equal(toNbdErrno('ENOTSUP'), NbdErr.ENOTSUP);
  assert.equal(fromNbdErrno(1), 'EPERM');
  assert.equal(fromNbdErrno(42), 'EINVAL');
  assert.equal(fromNbdErrno(108), 'ESHUTDOWN');
});

test('failed requests are logged at most once a second per export, with the count of those not logged', async () => {
  const { NbdExport } = await import('../../src/nbd/export.js');
  const g = createGraph();
  const node = await g.add({ driver: 'memory', 'node-name': 'm', size: 4096 });
  const exp = new NbdExport({ name: 'm', node });
  assert.equal(exp.errorLogSlot(10_000), 0);
  assert.equal(exp.errorLogSlot(10_400), null);
  assert.equal(exp.errorLogSlot(10_999), null);
  assert.equal(exp.errorLogSlot(11_000), 2);
  assert.equal(exp.errorLogSlot(12_500), 0);
  exp.release();
  await g.closeAll();
});
