/**
 * Creating images (qemu-img 7.2's exact layout), reading their info, format
 * probing, blockdev options, and images with internal snapshots.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { BlockError } from '../../src/block/errors.js';
import { createGraph } from '../../src/drivers/index.js';
import { checkQcow2, createQcow2, isQcow2, readQcow2Info } from '../../src/drivers/qcow2/index.js';
import { tempDir } from '../helpers/env.js';
import { KiB, MiB, assertQemuCheckClean, assertSameBytes, openImage, qemuCheck, qemuImg, qemuIo, readAll } from './helpers.js';
import { layout } from './surgery.js';

test('createQcow2 writes byte-for-byte what qemu-img create writes', async () => {
  const dir = tempDir();
  const cases: Array<{ size: number; cs: number; bits: number; backing?: boolean; lazy?: boolean }> = [
    { size: 1 << 30, cs: 65536, bits: 16 },
    { size: 1 << 30, cs: 512, bits: 16 },
    { size: 1 << 30, cs: 512, bits: 1 },
    { size: 1 << 30, cs: 4096, bits: 64 },
    { size: 100 * MiB + 512, cs: 2 * MiB, bits: 16 },
    { size: 0, cs: 65536, bits: 16 },
    { size: 10 * MiB, cs: 65536, bits: 16, backing: true },
    { size: 10 * MiB, cs: 65536, bits: 16, lazy: true },
  ];
  for (const c of cases) {
    const theirs = dir.file('theirs.qcow2');
    const ours = dir.file('ours.qcow2');
    const o = [`cluster_size=${c.cs}`, `refcount_bits=${c.bits}`];
    if (c.lazy) o.push('lazy_refcounts=on');
    const args = ['create', '-q', '-f', 'qcow2', '-o', o.join(',')];
    if (c.backing) args.push('-u', '-b', 'base.qcow2', '-F', 'qcow2');
    await qemuImg(...args, theirs, String(c.size));
    const opts: Parameters<typeof createQcow2>[1] = { size: c.size, clusterSize: c.cs, refcountBits: c.bits };
    if (c.backing) Object.assign(opts, { backingFile: 'base.qcow2', backingFormat: 'qcow2' });
    if (c.lazy) opts.lazyRefcounts = true;
    await createQcow2(ours, opts);
    assertSameBytes(readFileSync(ours), readFileSync(theirs), JSON.stringify(c));
  }
  await assert.rejects(createQcow2(dir.file('x.qcow2'), { size: MiB, backingFile: 'b' }), /without backing format/);
  await assert.rejects(createQcow2(dir.file('x.qcow2'), { size: MiB, clusterSize: 3000 }), /power of two/);
  dir.cleanup();
});

test('readQcow2Info and format probing', async () => {
  const dir = tempDir();
  const path = dir.file('i.qcow2');
  await createQcow2(path, { size: 3 * MiB, clusterSize: 4096, refcountBits: 8, backingFile: '../b.raw', backingFormat: 'raw', lazyRefcounts: true });
  const info = await readQcow2Info(path);
  assert.deepEqual(info, {
    version: 3, virtualSize: 3 * MiB, clusterSize: 4096, refcountBits: 8, backingFile: '../b.raw', backingFormat: 'raw',
    dirty: false, corrupt: false, lazyRefcounts: true, compressionType: 'zlib', l1Size: 2, extendedL2: false,
    fileLength: info.fileLength,
  });
  assert.ok(isQcow2(readFileSync(path).subarray(0, 8)));
  assert.ok(!isQcow2(Buffer.from('not an image')));
  const v2 = dir.file('v2.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', v2, '1M');
  assert.equal((await readQcow2Info(v2)).version, 2);
  dir.cleanup();
});

test('blockdev options: QEMU qcow2 options are accepted, unknown and unsupported ones refused', async () => {
  const dir = tempDir();
  const path = dir.file('o.qcow2');
  await createQcow2(path, { size: 4 * MiB });
  const { graph, node } = await openImage(path, {
    'lazy-refcounts': 'off', 'cache-size': '1M', 'l2-cache-entry-size': 65536, 'refcount-cache-size': 262144,
    'overlap-check': { template: 'all', 'main-header': true }, 'discard-no-unref': true, 'pass-discard-request': 'on',
    'pass-discard-other': false, 'cache-clean-interval': 600,
  });
  await node.write(0, Buffer.alloc(64 * KiB, 1));
  const info = node.info();
  assert.equal(info.drv, 'qcow2');
  assert.deepEqual((info.image as Record<string, unknown>)['format-specific'], {
    type: 'qcow2',
    data: { compat: '1.1', 'refcount-bits': 16, 'compression-type': 'zlib', 'lazy-refcounts': false, corrupt: false, 'extended-l2': false },
  });
  // discard-no-unref keeps the host cluster: it reads as zero but stays allocated.
  await node.discard(0, 64 * KiB);
  const st = await node.blockStatus(0, 64 * KiB);
  assert.ok(st.offset >= 0, 'zero cluster keeps its host offset');
  await graph.closeAll();
  await assertQemuCheckClean(path);

  await assert.rejects(openImage(path, { 'no-such-option': 1 }), /Block format 'qcow2' does not support the option 'no-such-option'/);
  await assert.rejects(openImage(path, { 'data-file': 'x' }), (e: unknown) => BlockError.is(e) && e.code === 'ENOTSUP');
  await assert.rejects(openImage(path, { 'overlap-check': 'sometimes' }), /overlap-check/);
  await assert.rejects(openImage(path, { 'cache-size': 1000, 'l2-cache-size': 2000, 'refcount-cache-size': 2000 }), /may not exceed cache-size/);
  const v2 = dir.file('v2.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', v2, '1M');
  await assert.rejects(openImage(v2, { 'lazy-refcounts': true }), /Lazy refcounts require/);
  await assert.rejects(openImage(path, { file: undefined as never }), /file/);
  dir.cleanup();
});

test('a small L2 cache is honoured and still gives correct data', async () => {
  const dir = tempDir();
  const path = dir.file('c.qcow2');
  await createQcow2(path, { size: 64 * MiB, clusterSize: 4096 });
  const { graph, node } = await openImage(path, { 'l2-cache-size': 8192, 'refcount-cache-size': 16384 });
  const model = Buffer.alloc(64 * MiB);
  for (let i = 0; i < 200; i++) {
    const off = (i * 2654435761) % (64 * MiB - 8192);
    const data = Buffer.alloc(5000, i & 0xff);
    await node.write(off, data);
    data.copy(model, off);
  }
  assertSameBytes(await readAll(node), model, 'content');
  await graph.closeAll();
  await assertQemuCheckClean(path);
  dir.cleanup();
});

test('images with internal snapshots open read-only (active layer) and are refused read-write', async () => {
  const dir = tempDir();
  const path = dir.file('s.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', path, '8M');
  await qemuIo(path, ['write -P 1 0 1M']);
  await qemuImg('snapshot', '-c', 'snap1', path);
  await qemuIo(path, ['write -P 2 0 64k']);
  await assert.rejects(openImage(path), /internal snapshots can only be opened read-only/);
  const { graph, node } = await openImage(path, { 'read-only': true });
  const want = Buffer.alloc(MiB, 1);
  want.fill(2, 0, 64 * KiB);
  assertSameBytes(await readAll(node, 0, MiB), want, 'active layer');
  await graph.closeAll();
  const ours = await checkQcow2(path);
  const theirs = await qemuCheck(path);
  assert.equal(theirs.status, 0);
  assert.equal(ours.corruptions + ours.leaks + ours.checkErrors, 0);
  assert.equal(ours.imageEndOffset, theirs.imageEndOffset);
  dir.cleanup();
});

test('the refcount table grows (new structure, then switch) when small clusters fill it', async () => {
  const dir = tempDir();
  const path = dir.file('g.qcow2');
  await createQcow2(path, { size: 16 * MiB, clusterSize: 512, refcountBits: 64 });
  const before = layout(path).reftableOffset;
  const { graph, node } = await openImage(path);
  const data = Buffer.alloc(6 * MiB, 0x5c);
  await node.write(MiB, data);
  await graph.closeAll();
  assert.notEqual(layout(path).reftableOffset, before, 'the reftable moved');
  await assertQemuCheckClean(path);
  await qemuIo(path, ['read -P 0x5c 1M 6M', 'read -P 0 0 1M']);
  dir.cleanup();
});

test('a backing file opened from the header is closed with its overlay (blockdev-del)', async () => {
  const dir = tempDir();
  const base = dir.file('base.qcow2');
  const top = dir.file('top.qcow2');
  await createQcow2(base, { size: MiB });
  await createQcow2(top, { size: MiB, backingFile: 'base.qcow2', backingFormat: 'qcow2' });
  const graph = createGraph();
  const node = await graph.add({ driver: 'qcow2', 'node-name': 'top', file: { driver: 'file', filename: top } });
  const backing = node.backing!;
  assert.equal(backing.driver, 'qcow2');
  await graph.delete('top');
  assert.ok(backing.isClosed, 'the backing node was closed');
  assert.equal(graph.allNodes().length, 0);
  dir.cleanup();
});

test('a second read-write open of the same image in this process is refused', async () => {
  const dir = tempDir();
  const path = dir.file('once.qcow2');
  await createQcow2(path, { size: MiB });
  const first = await openImage(path);
  await assert.rejects(openImage(path), (e: unknown) => BlockError.is(e) && e.code === 'EBUSY' && /write" lock/.test(e.message));
  const reader = await openImage(path, { 'read-only': true });
  await reader.graph.closeAll();
  await first.graph.closeAll();
  const second = await openImage(path);
  await second.graph.closeAll();
  dir.cleanup();
});
