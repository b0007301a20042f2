/**
 * Many requests in flight at once: overlapping and adjacent writes, zeroes,
 * discards, reads and flushes on the same and neighbouring clusters, across
 * L2-table and refblock boundaries (small clusters), with caches small enough
 * to force evictions. Conflicting requests are served in issue order, so the
 * result must equal applying them one by one in that order.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { Req } from '../../src/block/node.js';
import { createQcow2 } from '../../src/drivers/qcow2/index.js';
import { patternBuffer, tempDir } from '../helpers/env.js';
import { KiB, MiB, assertQemuCheckClean, assertSameBytes, openImage, qemuCheck, qemuImg, readAll } from './helpers.js';

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

interface Scenario {
  name: string;
  clusterSize: number;
  size: number;
  ops: number;
  maxLen: number;
  extra?: Record<string, number>;
  backing?: boolean;
}

const SCENARIOS: Scenario[] = [
  // 512-byte clusters: an L2 table covers 32 KiB, a 16-bit refblock 128 KiB.
  { name: '512-byte clusters, tiny caches', clusterSize: 512, size: 2 * MiB, ops: 600, maxLen: 9000, extra: { 'l2-cache-size': 1024, 'refcount-cache-size': 2048 } },
  { name: '64 KiB clusters, one hot region', clusterSize: 65536, size: MiB, ops: 500, maxLen: 100 * KiB },
  { name: '4 KiB clusters over a backing', clusterSize: 4096, size: 4 * MiB, ops: 500, maxLen: 40 * KiB, backing: true, extra: { 'l2-cache-size': 8192 } },
];

async function runScenario(s: Scenario, seed: number): Promise<void> {
  const dir = tempDir();
  const path = dir.file('img.qcow2');
  const model = Buffer.alloc(s.size);
  if (s.backing) {
    const base = dir.file('base.raw');
    const data = patternBuffer(s.size, 99);
    writeFileSync(base, data);
    data.copy(model);
    await createQcow2(path, { size: s.size, clusterSize: s.clusterSize, backingFile: 'base.raw', backingFormat: 'raw' });
  } else {
    await createQcow2(path, { size: s.size, clusterSize: s.clusterSize });
  }
  const { graph, node } = await openImage(path, s.extra ?? {});
  const rand = rng(seed);
  const cs = s.clusterSize;
  const inFlight: Array<Promise<void>> = [];
  const reads: Array<{ promise: Promise<void>; buf: Buffer; expect: Buffer }> = [];

  for (let i = 0; i < s.ops; i++) {
    // Bias offsets towards cluster and table boundaries.
    const anchor = Math.floor(rand() * (s.size / cs)) * cs;
    const off = Math.min(s.size - 1, Math.max(0, anchor + Math.floor((rand() - 0.5) * 2 * cs)));
    const len = Math.max(1, Math.min(s.size - off, Math.floor(rand() * s.maxLen)));
    const r = rand();
    if (r < 0.55) {
      const data = patternBuffer(len, seed * 1000 + i);
      inFlight.push(node.write(off, data, rand() < 0.05 ? Req.FUA : 0));
      data.copy(model, off);
    } else if (r < 0.65) {
      const unmap = rand() < 0.5;
      inFlight.push(node.writeZeroes(off, len, unmap ? Req.MAY_UNMAP : 0));
      model.fill(0, off, off + len);
    } else if (r < 0.75) {
      inFlight.push(node.discard(off, len));
      const end = off + len;
      const first = Math.ceil(off / cs);
      const last = end === s.size ? Math.ceil(end / cs) : Math.floor(end / cs);
      for (let c = first; c < last; c++) model.fill(0, c * cs, Math.min((c + 1) * cs, s.size));
    } else if (r < 0.95) {
      const buf = Buffer.alloc(len);
      const expect = Buffer.from(model.subarray(off, off + len));
      const promise = node.read(off, buf);
      reads.push({ promise, buf, expect });
      inFlight.push(promise);
    } else {
      inFlight.push(node.flush());
    }
  }
  await Promise.all(inFlight);
  reads.forEach((r, i) => assertSameBytes(r.buf, r.expect, `${s.name}: read #${i} sees exactly the writes issued before it`));
  assertSameBytes(await readAll(node), model, `${s.name}: final content`);
  await graph.closeAll();
  await assertQemuCheckClean(path);
  writeFileSync(dir.file('expected.raw'), model);
  await qemuImg('compare', '-f', 'qcow2', '-F', 'raw', path, dir.file('expected.raw'));
  dir.cleanup();
}

for (const s of SCENARIOS) {
  test(`concurrent mixed requests: ${s.name}`, async () => {
    for (const seed of [1, 2, 3]) await runScenario(s, seed);
  });
}

test('parallel allocating writes to distinct clusters all land, one write per cluster', async () => {
  const dir = tempDir();
  const path = dir.file('img.qcow2');
  await createQcow2(path, { size: 256 * MiB });
  const { graph, node } = await openImage(path);
  const writes: Array<Promise<void>> = [];
  for (let i = 0; i < 2048; i++) writes.push(node.write(i * 128 * KiB + 4096, patternBuffer(4096, i)));
  await Promise.all(writes);
  await node.flush();
  for (let i = 0; i < 2048; i += 97) {
    assertSameBytes(await readAll(node, i * 128 * KiB, 8192), Buffer.concat([Buffer.alloc(4096), patternBuffer(4096, i)]), `cluster ${i}`);
  }
  await graph.closeAll();
  await assertQemuCheckClean(path);
  dir.cleanup();
});

test('writes racing into one unallocated cluster from both ends are both kept', async () => {
  const dir = tempDir();
  const path = dir.file('img.qcow2');
  await createQcow2(path, { size: 2 * MiB });
  const { graph, node } = await openImage(path);
  for (let round = 0; round < 20; round++) {
    const base = round * 65536;
    const a = node.write(base, Buffer.alloc(100, 0xa1));
    const b = node.write(base + 65536 - 100, Buffer.alloc(100, 0xb2));
    const c = node.write(base + 30000, Buffer.alloc(5000, 0xc3));
    await Promise.all([a, b, c]);
    const got = await readAll(node, base, 65536);
    const want = Buffer.alloc(65536);
    want.fill(0xa1, 0, 100);
    want.fill(0xc3, 30000, 35000);
    want.fill(0xb2, 65536 - 100);
    assertSameBytes(got, want, `round ${round}`);
  }
  assert.equal(node.requestsInFlight, 0);
  await graph.closeAll();
  await assertQemuCheckClean(path);
  dir.cleanup();
});

test('flushes racing with allocations leave a clean image at every flush', async () => {
  const dir = tempDir();
  const path = dir.file('img.qcow2');
  await createQcow2(path, { size: 8 * MiB, clusterSize: 4096 });
  const { graph, node } = await openImage(path, { 'l2-cache-size': 8192 });
  const all: Array<Promise<void>> = [];
  for (let i = 0; i < 400; i++) {
    all.push(node.write((i * 7919 * 512) % (8 * MiB - 4096), patternBuffer(3000, i)));
    if (i % 10 === 0) all.push(node.flush());
    if (i % 25 === 0) all.push(node.discard(((i * 104729) % 2000) * 4096, 16 * KiB));
  }
  await Promise.all(all);
  await node.flush();
  // While still open: no corruption (frees applied after the flush may still be leaks).
  const open = await qemuCheck(path);
  assert.ok(open.status === 0 || open.status === 3, open.raw);
  await graph.closeAll();
  await assertQemuCheckClean(path);
  dir.cleanup();
});

