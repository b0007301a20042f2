/**
 * Images made and written by qemu-img/qemu-io read back through colo-blk
 * exactly as `qemu-img convert -O raw` reads them, and our block status
 * agrees with `qemu-img map`.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { blockStatusAbove } from '../../src/block/chain.js';
import { Status, type BlockNode } from '../../src/block/node.js';
import { tempDir } from '../helpers/env.js';
import { MiB, assertQemuCheckClean, assertSameBytes, openImage, qemuImg, qemuIo, qemuMap, readAll, type MapEntry } from './helpers.js';

const WRITES = [
  'write -P 0x11 0 100k',
  'write -P 0x22 1M 4k',
  'write -P 0x33 5000 3000',
  'write -z 2M 128k',
  'write -P 0x44 3M 192k',
  'write -z -u 3M 64k',
  'discard 3200k 64k',
  'write -P 0x55 7M 1M',
];

async function expectLikeQemu(path: string, node: BlockNode, dir: { file(n: string): string }): Promise<void> {
  const raw = dir.file('expected.raw');
  await qemuImg('convert', '-O', 'raw', path, raw);
  assertSameBytes(await readAll(node), readFileSync(raw), path);
}

/** Our chain walk, merged into extents comparable with qemu-img map's. */
async function ourMap(top: BlockNode): Promise<Array<{ start: number; length: number; depth: number; present: boolean; data: boolean }>> {
  const out: Array<{ start: number; length: number; depth: number; present: boolean; data: boolean }> = [];
  let depthMax = 0;
  for (let n: BlockNode | null = top; n; n = n.backing) depthMax++;
  for (let pos = 0; pos < top.size;) {
    const st = await blockStatusAbove(top, null, pos, top.size - pos);
    // qemu-img map calls a range past the end of a shorter backing "not
    // present", at the depth of the deepest layer that still covers it.
    const pastEnd = st.layer !== null && pos >= st.layer.size;
    const present = st.depth > 0 && !pastEnd;
    const depth = pastEnd ? st.depth - 2 : present ? st.depth - 1 : depthMax - 1;
    const e = { start: pos, length: st.length, depth, present, data: (st.flags & Status.DATA) !== 0 };
    const last = out[out.length - 1];
    if (last && last.depth === e.depth && last.present === e.present && last.data === e.data && last.start + last.length === e.start) last.length += e.length;
    else out.push(e);
    pos += st.length;
  }
  return out;
}

function qemuMerged(entries: MapEntry[]): Array<{ start: number; length: number; depth: number; present: boolean; data: boolean }> {
  const out: Array<{ start: number; length: number; depth: number; present: boolean; data: boolean }> = [];
  for (const m of entries) {
    const e = { start: m.start, length: m.length, depth: m.depth, present: m.present, data: m.data };
    const last = out[out.length - 1];
    if (last && last.depth === e.depth && last.present === e.present && last.data === e.data && last.start + last.length === e.start) last.length += e.length;
    else out.push(e);
  }
  return out;
}

const CONFIGS: Array<{ name: string; opts: string }> = [
  { name: 'v3 64k/16', opts: 'cluster_size=65536,refcount_bits=16' },
  { name: 'v3 512/1', opts: 'cluster_size=512,refcount_bits=1' },
  { name: 'v3 4k/64', opts: 'cluster_size=4096,refcount_bits=64' },
  { name: 'v3 2M/8', opts: 'cluster_size=2097152,refcount_bits=8' },
  { name: 'v3 16k/2', opts: 'cluster_size=16384,refcount_bits=2' },
  { name: 'v3 32k/4', opts: 'cluster_size=32768,refcount_bits=4' },
  { name: 'v3 8k/32', opts: 'cluster_size=8192,refcount_bits=32' },
  { name: 'v2 64k', opts: 'compat=0.10,cluster_size=65536' },
  { name: 'v2 4k', opts: 'compat=0.10,cluster_size=4096' },
];

for (const cfg of CONFIGS) {
  test(`qemu-written ${cfg.name} image reads back like qemu-img convert`, async () => {
    const dir = tempDir();
    const path = dir.file('img.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', cfg.opts, path, '9M');
    const cmds = cfg.opts.startsWith('compat=0.10') ? WRITES.filter((c) => !c.includes('-u')) : WRITES;
    await qemuIo(path, cmds);
    const { graph, node } = await openImage(path, { 'read-only': true });
    await expectLikeQemu(path, node, dir);
    assert.deepEqual(await ourMap(node), qemuMerged(await qemuMap(path)));
    await graph.closeAll();
    dir.cleanup();
  });
}

test('a three-deep qemu-made chain (with a shorter base) reads like qemu-img convert, map agrees', async () => {
  const dir = tempDir();
  const base = dir.file('base.qcow2');
  const mid = dir.file('mid.qcow2');
  const top = dir.file('top.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', base, '4M');
  await qemuIo(base, ['write -P 0xb1 0 4M']);
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', mid, '6M');
  await qemuIo(mid, ['write -P 0xc2 64k 64k', 'write -z 256k 64k', 'discard 512k 64k', 'write -P 0xc3 4500k 100k']);
  await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', mid, '-F', 'qcow2', top, '8M');
  await qemuIo(top, ['write -P 0xd4 70k 10', 'write -z -u 1M 8k', 'write -P 0xd5 6M 100k']);

  const { graph, node } = await openImage(top, { 'read-only': true });
  assert.equal(node.backing?.backing?.driver, 'qcow2', 'backing files are opened from the headers');
  await expectLikeQemu(top, node, dir);
  assert.deepEqual(await ourMap(node), qemuMerged(await qemuMap(top)));
  await graph.closeAll();
  dir.cleanup();
});

test('compressed clusters from qemu-img convert -c read correctly', async () => {
  const dir = tempDir();
  const src = dir.file('src.qcow2');
  const comp = dir.file('comp.qcow2');
  for (const cs of ['4096', '65536']) {
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, src, '3M');
    await qemuIo(src, ['write -P 0x5a 0 300k', 'write -P 0x17 1M 5000', 'write -P 0x99 2M 1M']);
    await qemuImg('convert', '-c', '-O', 'qcow2', '-o', `cluster_size=${cs}`, src, comp);
    const { graph, node } = await openImage(comp, { 'read-only': true });
    await expectLikeQemu(comp, node, dir);
    const st = await node.blockStatus(0, 4096);
    assert.equal(st.flags, Status.DATA | Status.ALLOCATED, 'compressed: data, allocated, no offset');
    await graph.closeAll();
  }
  dir.cleanup();
});

test('compressed clusters are rewritten into normal ones on write', async () => {
  const dir = tempDir();
  const src = dir.file('src.qcow2');
  const comp = dir.file('comp.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', src, '1M');
  await qemuIo(src, ['write -P 0x5a 0 1M']);
  await qemuImg('convert', '-c', '-O', 'qcow2', src, comp);
  const { graph, node } = await openImage(comp);
  await node.write(100, Buffer.alloc(10, 0x77));
  await node.writeZeroes(128 * 1024, 64 * 1024, 0);
  await graph.closeAll();
  await qemuIo(comp, ['read -P 0x5a 0 100', 'read -P 0x77 100 10', 'read -P 0x5a 110 130962', 'read -P 0 128k 64k', 'read -P 0x5a 192k 832k']);
  await assertQemuCheckClean(comp);
  dir.cleanup();
});

test('a raw backing file and MiB-sized reads across many clusters', async () => {
  const dir = tempDir();
  const base = dir.file('base.raw');
  const top = dir.file('top.qcow2');
  await qemuImg('create', '-q', '-f', 'raw', base, '3M');
  await qemuIo(base, ['write -P 0x42 0 3M'], 'raw');
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', top, '4M');
  await qemuIo(top, ['write -P 0x43 1000k 100k']);
  const { graph, node } = await openImage(top, { 'read-only': true });
  await expectLikeQemu(top, node, dir);
  const buf = Buffer.alloc(MiB);
  await node.read(3 * MiB, buf);
  assert.ok(buf.every((b) => b === 0), 'past the end of the shorter backing reads zeroes');
  await graph.closeAll();
  dir.cleanup();
});
