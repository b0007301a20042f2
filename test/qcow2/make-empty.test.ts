/**
 * make-empty: afterwards nothing is allocated in the emptied layer, the
 * backing shows through, qemu-img check is clean, the backing name and
 * header extensions are kept and the file is small again. Requests racing
 * with it are ordered around it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Req } from '../../src/block/node.js';
import { createGraph } from '../../src/drivers/index.js';
import { createQcow2, readQcow2Info } from '../../src/drivers/qcow2/index.js';
import { tempDir } from '../helpers/env.js';
import {
  KiB, MiB, assertQemuCheckClean, assertSameBytes, openImage, qemuImg, qemuIo, qemuMap, readAll,
} from './helpers.js';
import { fileSize, readBytes } from './surgery.js';

async function chain(dir: { file(n: string): string }, topOpts: string[] = []): Promise<{ base: string; top: string }> {
  const base = dir.file('base.qcow2');
  const top = dir.file('top.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', base, '64M');
  await qemuIo(base, ['write -P 0x3c 0 64M']);
  await qemuImg('create', '-q', '-f', 'qcow2', ...topOpts, '-b', 'base.qcow2', '-F', 'qcow2', top, '64M');
  return { base, top };
}

test('make-empty (fast path) leaves a small clean image through which the backing shows', async () => {
  const dir = tempDir();
  const { top } = await chain(dir);
  const cluster0Before = readBytes(top, 0, 65536);
  const { graph, node } = await openImage(top);
  await node.write(0, Buffer.alloc(32 * MiB, 0x11));
  await node.write(40 * MiB + 5, Buffer.alloc(100 * KiB, 0x12));
  await node.writeZeroes(50 * MiB, MiB, Req.MAY_UNMAP);
  await node.discard(60 * MiB, MiB);
  await node.flush();
  await node.write(33 * MiB, Buffer.alloc(MiB, 0x13)); // unflushed when emptied
  await node.makeEmpty();
  assertSameBytes(await readAll(node), Buffer.alloc(64 * MiB, 0x3c), 'backing shows through');
  const st = await node.blockStatus(0, node.size);
  assert.equal(st.flags, 0, 'nothing allocated');
  assert.equal(st.length, node.size);
  // Still usable afterwards.
  await node.write(MiB, Buffer.alloc(4 * KiB, 0x14));
  await graph.closeAll();

  await assertQemuCheckClean(top);
  const map = await qemuMap(top);
  const local = map.filter((m) => m.depth === 0);
  assert.deepEqual(local.map((m) => [m.start, m.length]), [[MiB, 64 * KiB]], 'only the write made after emptying is in the top layer');
  const info = await readQcow2Info(top);
  assert.equal(info.backingFile, 'base.qcow2');
  assert.equal(info.backingFormat, 'qcow2');
  assert.ok(!info.dirty);
  const cluster0After = readBytes(top, 0, 65536);
  assert.ok(cluster0After.subarray(104).equals(cluster0Before.subarray(104)), 'extensions and backing name unchanged');
  assert.ok(fileSize(top) <= 7 * 64 * KiB, `file is small again (${fileSize(top)})`);
  await qemuIo(top, ['read -P 0x3c 0 1M', 'read -P 0x14 1M 4k', 'read -P 0x3c 1028k 64508k']);
  dir.cleanup();
});

test('make-empty right after opening (nothing cached) and twice in a row', async () => {
  const dir = tempDir();
  const { top } = await chain(dir, ['-o', 'cluster_size=4096']);
  await qemuIo(top, ['write -P 0x21 0 2M']);
  const { graph, node } = await openImage(top);
  await node.makeEmpty();
  await node.makeEmpty();
  assertSameBytes(await readAll(node, 0, 4 * MiB), Buffer.alloc(4 * MiB, 0x3c), 'backing shows through');
  await graph.closeAll();
  await assertQemuCheckClean(top);
  assert.equal(fileSize(top), (3 + 1) * 4096);
  dir.cleanup();
});

test('make-empty on a v2 image uses the full-discard fallback', async () => {
  const dir = tempDir();
  const { top } = await chain(dir, ['-o', 'compat=0.10']);
  const { graph, node } = await openImage(top);
  await node.write(0, Buffer.alloc(3 * MiB, 0x31));
  await node.makeEmpty();
  assertSameBytes(await readAll(node, 0, 4 * MiB), Buffer.alloc(4 * MiB, 0x3c), 'backing shows through');
  await graph.closeAll();
  await assertQemuCheckClean(top);
  assert.ok((await qemuMap(top)).every((m) => m.depth > 0), 'nothing allocated in the top layer');
  dir.cleanup();
});

test('requests racing with make-empty are ordered around it', async () => {
  const dir = tempDir();
  const { top } = await chain(dir);
  const { graph, node } = await openImage(top);
  const before = Array.from({ length: 16 }, (_, i) => node.write(i * MiB, Buffer.alloc(64 * KiB, 0x41)));
  const empty = node.makeEmpty();
  const after = Array.from({ length: 16 }, (_, i) => node.write(i * MiB + 128 * KiB, Buffer.alloc(64 * KiB, 0x42)));
  await Promise.all([...before, empty, ...after]);
  for (let i = 0; i < 16; i++) {
    const got = await readAll(node, i * MiB, 256 * KiB);
    const want = Buffer.alloc(256 * KiB, 0x3c);
    want.fill(0x42, 128 * KiB, 192 * KiB);
    assertSameBytes(got, want, `MiB ${i}`);
  }
  await graph.closeAll();
  await assertQemuCheckClean(top);
  dir.cleanup();
});

test('an overlay created by colo-blk without a backing name, emptied while linked at run time', async () => {
  const dir = tempDir();
  const { base } = await chain(dir);
  const active = dir.file('active.qcow2');
  await createQcow2(active, { size: 64 * MiB });
  const graph = createGraph();
  await graph.add({ driver: 'qcow2', 'node-name': 'base', 'read-only': true, file: { driver: 'file', filename: base } });
  const node = await graph.add({ driver: 'qcow2', 'node-name': 'active', file: { driver: 'file', filename: active }, backing: 'base' });
  await node.write(10 * MiB, Buffer.alloc(10 * MiB, 0x51));
  await node.makeEmpty();
  assertSameBytes(await readAll(node, 10 * MiB, MiB), Buffer.alloc(MiB, 0x3c), 'backing shows through');
  await graph.closeAll();
  await assertQemuCheckClean(active);
  assert.equal((await readQcow2Info(active)).backingFile, undefined);
  dir.cleanup();
});

test('concurrent make-empty calls take turns', async () => {
  const dir = tempDir();
  const { top } = await chain(dir);
  const { graph, node } = await openImage(top);
  await node.write(0, Buffer.alloc(MiB, 1));
  const a = node.makeEmpty();
  const w = node.write(2 * MiB, Buffer.alloc(64 * KiB, 2));
  const b = node.makeEmpty();
  await Promise.all([a, w, b]);
  assertSameBytes(await readAll(node, 0, 4 * MiB), Buffer.alloc(4 * MiB, 0x3c), 'everything emptied');
  await graph.closeAll();
  await assertQemuCheckClean(top);
  dir.cleanup();
});

test('x-empty-keeps-space: the file keeps its length, later writes reuse it in place, and nothing stale shows', async () => {
  const dir = tempDir();
  // A zero backing: a partial write into a reused cluster must read zeroes around it, never the old bytes there.
  const base = dir.file('zero-base.qcow2');
  const top = dir.file('top.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', base, '64M');
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'zero-base.qcow2', '-F', 'qcow2', top, '64M');
  const { graph, node } = await openImage(top, { 'x-empty-keeps-space': true });
  await node.write(0, Buffer.alloc(16 * MiB, 0x5a));
  await node.flush();
  const grown = fileSize(top);
  await node.makeEmpty();
  assert.equal(fileSize(top), grown, 'the space is kept');
  assertSameBytes(await readAll(node, 0, 16 * MiB), Buffer.alloc(16 * MiB), 'backing (zeroes) shows through');
  // Partial-cluster writes land in reused clusters: their heads and tails must read as the backing.
  await node.write(8 * MiB + 1000, Buffer.alloc(3000, 0x61));
  await node.write(12 * MiB + 65536 - 512, Buffer.alloc(1024, 0x62));
  await node.write(2 * MiB, Buffer.alloc(4 * MiB, 0x63));
  const model = Buffer.alloc(16 * MiB);
  model.fill(0x61, 8 * MiB + 1000, 8 * MiB + 4000);
  model.fill(0x62, 12 * MiB + 65536 - 512, 12 * MiB + 65536 + 512);
  model.fill(0x63, 2 * MiB, 6 * MiB);
  assertSameBytes(await readAll(node, 0, 16 * MiB), model, 'after reuse');
  assert.equal(fileSize(top), grown, 'the writes reused the kept space');
  await graph.closeAll();
  await assertQemuCheckClean(top);
  await qemuIo(top, ['read -P 0 0 2M', 'read -P 0x63 2M 4M', 'read -P 0 8M 1000', 'read -P 0x61 8389608 3000', 'read -P 0 8392608 1000']);
  dir.cleanup();
});
