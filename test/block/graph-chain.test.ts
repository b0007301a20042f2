import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { blockStatusAbove, isAllocatedAbove, reaches } from '../../src/block/chain.js';
import { BlockError } from '../../src/block/errors.js';
import { Req, Status } from '../../src/block/node.js';
import { createGraph } from '../../src/drivers/index.js';
import { tempDir } from '../helpers/env.js';

const MiB = 1024 * 1024;

async function chain3() {
  const g = createGraph();
  const base = await g.add({ driver: 'memory', 'node-name': 'base', size: 4 * MiB });
  const hidden = await g.add({ driver: 'memory', 'node-name': 'hidden', backing: 'base' });
  const active = await g.add({ driver: 'memory', 'node-name': 'active', backing: 'hidden' });
  return { g, base, hidden, active };
}

test('a three-deep memory chain reads through and copies up on partial writes', async () => {
  const { g, base, hidden, active } = await chain3();
  await base.write(0, Buffer.alloc(2 * MiB, 0x11));
  await hidden.write(65536, Buffer.alloc(512, 0x22));
  await active.write(65536 + 1024, Buffer.alloc(100, 0x33));
  const buf = Buffer.alloc(65536);
  await active.read(65536, buf);
  assert.equal(buf[0], 0x22);
  assert.equal(buf[511], 0x22);
  assert.equal(buf[512], 0x11);
  assert.equal(buf[1024], 0x33);
  assert.equal(buf[1123], 0x33);
  assert.equal(buf[1124], 0x11);
  const st = await blockStatusAbove(active, null, 65536, 65536);
  assert.equal(st.depth, 1);
  assert.equal(st.layer, active);
  const deep = await blockStatusAbove(active, null, 0, 65536);
  assert.equal(deep.depth, 3);
  assert.ok(deep.flags & Status.DATA);
  const none = await blockStatusAbove(active, null, 3 * MiB, MiB);
  assert.equal(none.depth, 0, 'no layer has it');
  assert.equal(none.layer, null);
  assert.ok(none.flags & Status.ZERO, 'unallocated in the whole chain reads as zeroes');
  await g.closeAll();
});

test('isAllocatedAbove honours base and includeBase and returns uniform runs', async () => {
  const { g, base, hidden, active } = await chain3();
  await base.write(0, Buffer.alloc(MiB, 1));
  await hidden.write(2 * 65536, Buffer.alloc(2 * 65536, 2));
  await active.write(5 * 65536, Buffer.alloc(65536, 3));
  // Above base: clusters 2-3 (hidden) and 5 (active).
  assert.deepEqual(await isAllocatedAbove(active, base, 0, MiB), { allocated: false, length: 2 * 65536 });
  assert.deepEqual(await isAllocatedAbove(active, base, 2 * 65536, MiB), { allocated: true, length: 2 * 65536 });
  assert.deepEqual(await isAllocatedAbove(active, base, 4 * 65536, MiB), { allocated: false, length: 65536 });
  assert.deepEqual(await isAllocatedAbove(active, base, 5 * 65536, 10), { allocated: true, length: 10 });
  // Only active counts when base is hidden; with includeBase hidden counts too.
  assert.equal((await isAllocatedAbove(active, hidden, 2 * 65536, 65536)).allocated, false);
  assert.equal((await isAllocatedAbove(active, hidden, 2 * 65536, 65536, { includeBase: true })).allocated, true);
  await assert.rejects(isAllocatedAbove(hidden, active, 0, 10), /not in the backing chain/);
  assert.ok(reaches(active, base));
  assert.ok(!reaches(base, active));
  await g.closeAll();
});

test('discard and write-zeroes on an overlay hide the backing; makeEmpty shows it again', async () => {
  const { g, base, active } = await chain3();
  await base.write(0, Buffer.alloc(4 * MiB, 0x55));
  await active.discard(65536, 3 * 65536);
  await active.writeZeroes(8 * 65536, 100, Req.MAY_UNMAP);
  const buf = Buffer.alloc(65536);
  await active.read(2 * 65536, buf);
  assert.ok(buf.every((b) => b === 0));
  await active.read(8 * 65536, buf);
  assert.ok(buf.subarray(0, 100).every((b) => b === 0));
  assert.ok(buf.subarray(100).every((b) => b === 0x55));
  await active.makeEmpty();
  await active.read(2 * 65536, buf);
  assert.ok(buf.every((b) => b === 0x55));
  assert.equal((await isAllocatedAbove(active, base, 0, 4 * MiB)).allocated, false);
  await g.closeAll();
});

test('graph refuses bad options with QEMU messages and cleans up', async () => {
  const g = createGraph();
  await assert.rejects(g.add({ 'node-name': 'x' }), /Parameter 'driver' is missing/);
  await assert.rejects(g.add({ driver: 'nosuch', 'node-name': 'x' }), /Parameter 'driver' does not accept value 'nosuch'/);
  await assert.rejects(g.add({ driver: 'memory', 'node-name': '1bad', size: 10 }), /Invalid node-name: '1bad'/);
  await assert.rejects(g.add({ driver: 'memory', 'node-name': 'm', size: 10, bogus: 1 }), /Block format 'memory' does not support the option 'bogus'/);
  assert.equal(g.lookup('m'), undefined, 'a failed open leaves no node behind');
  await g.add({ driver: 'memory', 'node-name': 'm', size: 1024 });
  await assert.rejects(g.add({ driver: 'memory', 'node-name': 'm', size: 1024 }), /Duplicate nodes with node-name='m'/);
  await g.add({ driver: 'memory', 'node-name': 'top', backing: 'm' });
  await assert.rejects(g.delete('m'), /Block device m is in use/);
  await g.delete('top');
  await g.delete('m');
  assert.equal(g.allNodes().length, 0);
});

test('file and raw nodes: bounds, read-only, growth, window', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = dir.file('disk.raw');
  writeFileSync(path, Buffer.alloc(65536, 0xab));
  const g = createGraph();
  const raw = await g.add({ driver: 'raw', 'node-name': 'r', file: { driver: 'file', filename: path } });
  assert.equal(raw.size, 65536);
  await raw.write(100, Buffer.from('hello'), Req.FUA);
  const buf = Buffer.alloc(7);
  await raw.read(99, buf);
  assert.deepEqual([...buf], [0xab, ...Buffer.from('hello'), 0xab]);
  await assert.rejects(raw.write(65530, Buffer.alloc(10)), (e: unknown) => BlockError.is(e) && e.code === 'EIO');
  const file = raw.file!;
  await file.write(65536, Buffer.alloc(10, 1));
  assert.equal(file.size, 65546, 'protocol nodes grow');
  assert.equal(raw.size, 65536, 'raw keeps its size');
  await g.closeAll();

  const g2 = createGraph();
  const ro = await g2.add({ driver: 'raw', 'node-name': 'ro', 'read-only': true, offset: 100, size: 5, file: { driver: 'file', filename: path } });
  const five = Buffer.alloc(5);
  await ro.read(0, five);
  assert.equal(five.toString(), 'hello');
  await assert.rejects(ro.write(0, Buffer.alloc(1)), (e: unknown) => BlockError.is(e) && e.code === 'EROFS');
  await assert.rejects(ro.makeEmpty(), /EROFS|read-only/);
  await g2.closeAll();
  await assert.rejects(createGraph().add({ driver: 'file', 'node-name': 'f', filename: dir.file('missing') }), /Could not open '.*missing': No such file or directory/);
});

test('quiesce holds new requests until resume and drains those in flight', async () => {
  const g = createGraph();
  const m = await g.add({ driver: 'memory', 'node-name': 'm', size: 65536 });
  await m.quiesce();
  let done = false;
  const w = m.write(0, Buffer.alloc(10, 7)).then(() => { done = true; });
  await new Promise<void>((r) => setImmediate(r));
  assert.equal(done, false);
  m.resume();
  await w;
  assert.equal(done, true);
  await g.closeAll();
});

test('replaceNode moves node parents and BlockBackends, except the ones named', async () => {
  const { BlockBackend } = await import('../../src/block/backend.js');
  const g = createGraph();
  const disk = await g.add({ driver: 'memory', 'node-name': 'disk', size: 65536 });
  const other = await g.add({ driver: 'memory', 'node-name': 'other', size: 65536 });
  const top = await g.add({ driver: 'memory', 'node-name': 'top', backing: 'disk' });
  const export0 = new BlockBackend('export0', disk);
  assert.equal(disk.backends.length, 1);
  assert.deepEqual(disk.nodeParents, [top]);
  g.replaceNode(disk, other, new Set([top]));
  assert.equal(export0.node, other, 'the backend follows the swap');
  assert.equal(top.backing, disk, 'excluded parent keeps its child');
  g.replaceNode(disk, other);
  assert.equal(top.backing, other);
  assert.equal(disk.parents.size, 0);
  await assert.rejects(export0.write(65000, Buffer.alloc(1000)), /beyond the end of export0/);
  await assert.rejects(g.delete('other'), /in use/);
  export0.detach();
  assert.equal(other.backends.length, 0);
  await g.closeAll();
});
