/**
 * Images written by colo-blk pass `qemu-img check`, compare equal to a raw
 * file holding the expected bytes (`qemu-img compare`), read back through
 * qemu-io, and `qemu-img map` agrees with our block status.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { blockStatusAbove } from '../../src/block/chain.js';
import { Req, Status, type BlockNode } from '../../src/block/node.js';
import { createGraph } from '../../src/drivers/index.js';
import { createQcow2 } from '../../src/drivers/qcow2/index.js';
import { patternBuffer, tempDir } from '../helpers/env.js';
import {
  KiB, MiB, assertQemuCheckClean, assertSameBytes, fileNode, openImage, qemuImg, qemuIo, qemuMap, readAll,
} from './helpers.js';

/** Applies the same operations to the node and to a byte model; returns the model. */
async function exercise(node: BlockNode, model: Buffer, cs: number, seed: number): Promise<void> {
  const size = model.length;
  const ops: Array<[string, number, number]> = [
    ['w', 0, 100 * KiB],
    ['w', 5000, 3000],
    ['w', MiB - 100, 300],
    ['z', 2 * MiB, 128 * KiB],
    ['w', 3 * MiB + 17, 200 * KiB],
    ['zu', 3 * MiB, 64 * KiB],
    ['d', 3 * MiB + 128 * KiB, 64 * KiB],
    ['w', size - 1000, 1000],
    ['z', 4 * MiB + 1000, 70 * KiB],
    ['w', 4 * MiB + 2 * cs, 10],
    ['d', 0, 30 * KiB],
    ['zu', 6 * MiB, MiB],
    ['w', 6 * MiB + 4096, 4096],
  ];
  let i = 0;
  for (const [op, off, len] of ops) {
    if (off + len > size) continue;
    i++;
    if (op === 'w') {
      const data = patternBuffer(len, seed * 100 + i);
      await node.write(off, data);
      data.copy(model, off);
    } else if (op === 'z' || op === 'zu') {
      await node.writeZeroes(off, len, op === 'zu' ? Req.MAY_UNMAP : 0);
      model.fill(0, off, off + len);
    } else {
      // Discard: whole clusters read as zeroes afterwards (a zero cluster
      // over the backing), partial ones keep their content.
      await node.discard(off, len);
      const first = Math.ceil(off / cs);
      const last = Math.floor((off + len) / cs);
      for (let c = first; c < last; c++) model.fill(0, c * cs, (c + 1) * cs);
    }
  }
}

const CONFIGS = [
  { cs: 65536, bits: 16 },
  { cs: 512, bits: 16 },
  { cs: 512, bits: 64 },
  { cs: 4096, bits: 1 },
  { cs: 2 * MiB, bits: 16 },
  { cs: 16384, bits: 8 },
];

for (const { cs, bits } of CONFIGS) {
  test(`colo-blk-written image (${cs}-byte clusters, ${bits}-bit refcounts) checks clean and compares equal`, async () => {
    const dir = tempDir();
    const path = dir.file('img.qcow2');
    const size = 8 * MiB;
    await createQcow2(path, { size, clusterSize: cs, refcountBits: bits });
    const model = Buffer.alloc(size);
    const { graph, node } = await openImage(path);
    await exercise(node, model, cs, cs + bits);
    // Enough data to need new refblocks (and, with small clusters, a bigger reftable).
    for (let off = 0; off < size; off += 512 * KiB) {
      const data = patternBuffer(64 * KiB, off);
      await node.write(off + 100 * KiB, data);
      data.copy(model, off + 100 * KiB);
    }
    assertSameBytes(await readAll(node), model, 'read back before close');
    await graph.closeAll();
    await assertQemuCheckClean(path);
    writeFileSync(dir.file('expected.raw'), model);
    await qemuImg('compare', '-f', 'qcow2', '-F', 'raw', path, dir.file('expected.raw'));
    await qemuIo(path, [`read -P 0 ${size - 2000} 1000`]);
    dir.cleanup();
  });
}

test('an overlay with a backing name: COW from the backing, qemu-io reads the chain', async () => {
  const dir = tempDir();
  const base = dir.file('base.qcow2');
  const top = dir.file('top.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', base, '8M');
  await qemuIo(base, ['write -P 0xab 0 8M']);
  await createQcow2(top, { size: 8 * MiB, backingFile: 'base.qcow2', backingFormat: 'qcow2' });
  const model = Buffer.alloc(8 * MiB, 0xab);
  const { graph, node } = await openImage(top);
  assert.equal(node.backing?.driver, 'qcow2');
  await exercise(node, model, 65536, 7);
  assertSameBytes(await readAll(node), model, 'overlay read');
  await graph.closeAll();
  await assertQemuCheckClean(top);
  writeFileSync(dir.file('expected.raw'), model);
  await qemuImg('compare', '-f', 'qcow2', '-F', 'raw', top, dir.file('expected.raw'));
  await qemuIo(top, ['read -P 0xab 100k 100k']);
  dir.cleanup();
});

test('backing linked at run time by node name, and backing: null ignoring the header', async () => {
  const dir = tempDir();
  const base = dir.file('base.qcow2');
  const top = dir.file('top.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', base, '4M');
  await qemuIo(base, ['write -P 0x61 0 4M']);
  await createQcow2(top, { size: 4 * MiB });

  const graph = createGraph();
  const baseNode = await graph.add({ driver: 'qcow2', 'node-name': 'base', 'read-only': true, file: fileNode(base) });
  const node = await graph.add({ driver: 'qcow2', 'node-name': 'top', file: fileNode(top), backing: 'base' });
  assert.equal(node.backing, baseNode);
  await node.write(1000, Buffer.alloc(10, 0x62));
  const model = Buffer.alloc(4 * MiB, 0x61);
  model.fill(0x62, 1000, 1010);
  assertSameBytes(await readAll(node), model, 'runtime chain');
  const st = await blockStatusAbove(node, null, 65536, 65536);
  assert.equal(st.depth, 2, 'unallocated in the top falls through to the node-name backing');
  await graph.closeAll();
  await assertQemuCheckClean(top);
  const spec = JSON.stringify({ driver: 'qcow2', file: fileNode(top), backing: { driver: 'qcow2', file: fileNode(base) } });
  writeFileSync(dir.file('expected.raw'), model);
  await qemuImg('compare', '-F', 'raw', `json:${spec}`, dir.file('expected.raw'));

  // backing: null hides the backing named in the header.
  const named = dir.file('named.qcow2');
  await createQcow2(named, { size: 4 * MiB, backingFile: 'base.qcow2', backingFormat: 'qcow2' });
  const r2 = await openImage(named, { backing: null });
  assert.equal(r2.node.backing, null);
  await r2.node.write(65536 + 10, Buffer.alloc(5, 0x63));
  const got = await readAll(r2.node, 65536, 65536);
  const want = Buffer.alloc(65536);
  want.fill(0x63, 10, 15);
  assertSameBytes(got, want, 'no backing: COW with zeroes');
  await r2.graph.closeAll();
  await assertQemuCheckClean(named);
  dir.cleanup();
});

test('qemu-img map on a colo-blk-written chain matches our chain walk', async () => {
  const dir = tempDir();
  const base = dir.file('base.qcow2');
  const top = dir.file('top.qcow2');
  await createQcow2(base, { size: 4 * MiB });
  await createQcow2(top, { size: 4 * MiB, backingFile: 'base.qcow2', backingFormat: 'qcow2' });
  const b = await openImage(base);
  await b.node.write(0, Buffer.alloc(MiB, 1));
  await b.node.writeZeroes(2 * MiB, 128 * KiB, 0);
  await b.graph.closeAll();
  const { graph, node } = await openImage(top);
  await node.write(64 * KiB, Buffer.alloc(64 * KiB, 2));
  await node.writeZeroes(256 * KiB, 64 * KiB, Req.MAY_UNMAP);
  await node.discard(512 * KiB, 128 * KiB);
  await node.write(3 * MiB, Buffer.alloc(192 * KiB, 3));
  await node.writeZeroes(3 * MiB + 64 * KiB, 64 * KiB, 0);

  const ours: Array<{ start: number; length: number; depth: number; present: boolean; data: boolean; zero: boolean; offset?: number }> = [];
  for (let pos = 0; pos < node.size;) {
    const st = await blockStatusAbove(node, null, pos, node.size - pos);
    const e: { start: number; length: number; depth: number; present: boolean; data: boolean; zero: boolean; offset?: number } = {
      start: pos, length: st.length, depth: st.depth > 0 ? st.depth - 1 : 1, present: st.depth > 0,
      data: (st.flags & Status.DATA) !== 0, zero: (st.flags & Status.ZERO) !== 0,
    };
    if (st.flags & Status.OFFSET_VALID) e.offset = st.offset;
    ours.push(e);
    pos += st.length;
  }
  await graph.closeAll();
  const theirs = await qemuMap(top);
  // Both sides split differently; compare per 64 KiB cluster.
  const at = (list: Array<{ start: number; length: number; depth: number; present: boolean; data: boolean; zero: boolean; offset?: number }>, pos: number) => {
    const e = list.find((x) => x.start <= pos && pos < x.start + x.length)!;
    return { depth: e.depth, present: e.present, data: e.data, zero: e.data ? false : e.zero, offset: e.offset === undefined ? undefined : e.offset + (pos - e.start) };
  };
  for (let pos = 0; pos < 4 * MiB; pos += 64 * KiB) {
    assert.deepEqual(at(ours, pos), at(theirs, pos), `extent at ${pos}`);
  }
  dir.cleanup();
});
