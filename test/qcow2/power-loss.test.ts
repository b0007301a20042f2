/**
 * Power loss, which a SIGKILL cannot simulate (the page cache survives it):
 * the image sits on an in-memory file node that logs every write and every
 * sync. A crash image keeps all writes before the last sync and an arbitrary
 * subset of the 512-byte sectors written after it. Every such image must be
 * free of corruption (leaks allowed) and hold everything acknowledged by a
 * completed flush.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { createGraph } from '../../src/drivers/index.js';
import { buildImage } from '../../src/drivers/qcow2/create.js';
import { Req } from '../../src/block/node.js';
import { patternBuffer, tempDir } from '../helpers/env.js';
import { applyToModel, batchOps, markTouched } from './crash-ops.js';
import { MiB, qemuCheck, qemuImg } from './helpers.js';
import { MemoryFile, memoryFileDriver, type LogEntry } from './memory-file.js';

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

/** The file as it could be after losing power at log position `at`. */
function crashImage(initial: Buffer, log: LogEntry[], at: number, rand: () => number): Buffer {
  let lastSync = -1;
  for (let i = 0; i < at; i++) if (log[i]!.kind === 'sync') lastSync = i;
  let img = Buffer.from(initial);
  const put = (offset: number, data: Buffer): void => {
    if (offset + data.length > img.length) {
      const next = Buffer.alloc(offset + data.length);
      img.copy(next);
      img = next;
    }
    data.copy(img, offset);
  };
  for (let i = 0; i < at; i++) {
    const e = log[i]!;
    if (e.kind !== 'write') continue;
    if (i < lastSync) {
      put(e.offset, e.data);
      continue;
    }
    // After the last sync: each 512-byte sector of each write may or may not have landed.
    const mode = rand();
    if (mode < 0.3) continue;
    if (mode < 0.6) {
      put(e.offset, e.data);
      continue;
    }
    for (let s = 0; s < e.data.length; s += 512) {
      if (rand() < 0.5) put(e.offset + s, e.data.subarray(s, Math.min(e.data.length, s + 512)));
    }
  }
  return img;
}

test('every power-loss image is free of corruption and keeps flushed data', async () => {
  const dir = tempDir();
  const size = 4 * MiB;
  const configs: Array<[number, number, Record<string, number>]> = [
    [65536, 11, {}],
    [4096, 12, {}],
    [512, 13, {}],
    // Tiny caches: metadata is mostly written back by evictions, between flushes.
    [4096, 14, { 'l2-cache-size': 8192, 'refcount-cache-size': 16384 }],
  ];
  for (const [cs, seed, cacheOptions] of configs) {
    const initial = buildImage({ size, clusterSize: cs });
    const log: LogEntry[] = [];
    const graph = createGraph();
    graph.register(memoryFileDriver(new MemoryFile(initial, log)));
    const node = await graph.add({ driver: 'qcow2', 'node-name': 'img', file: { driver: 'memory-file' }, ...cacheOptions });
    const batches = 6;
    for (let b = 0; b < batches; b++) {
      const pending: Array<Promise<void>> = [];
      // make-empty (always first in a batch) runs before the rest.
      if (batchOps(seed, b, size)[0]?.kind === 'empty') await node.makeEmpty();
      batchOps(seed, b, size).forEach((op, index) => {
        if (op.kind === 'write' && op.fua) {
          pending.push(node.write(op.off, patternBuffer(op.len, op.seed), Req.FUA).then(() => { log.push({ kind: 'fua', batch: b, index }); }));
        } else if (op.kind === 'write') pending.push(node.write(op.off, patternBuffer(op.len, op.seed)));
        else if (op.kind === 'zero') pending.push(node.writeZeroes(op.off, op.len, op.unmap ? Req.MAY_UNMAP : 0));
        else if (op.kind === 'discard') pending.push(node.discard(op.off, op.len));
      });
      await Promise.all(pending);
      await node.flush();
      log.push({ kind: 'ack', batch: b });
    }
    await graph.closeAll();

    const rand = rng(seed);
    // Losing power just before a sync leaves the most writes in doubt: try
    // every such point, plus the end of the run.
    const syncs: number[] = [];
    log.forEach((e, i) => { if (e.kind === 'sync') syncs.push(i); });
    const points = new Set<number>([log.length]);
    const step = Math.max(1, syncs.length / 20);
    for (let k = 0; k < syncs.length; k += step) points.add(syncs[Math.floor(k)]!);
    for (const at of [...points].sort((a, b) => a - b)) {
      let acked = -1;
      for (let i = 0; i < at; i++) {
        const e = log[i]!;
        if (e.kind === 'ack') acked = e.batch;
      }
      const image = dir.file('crash.qcow2');
      writeFileSync(image, crashImage(initial, log, at, rand));
      const dirty = (readFileSync(image).readBigUInt64BE(72) & 1n) === 1n;
      const check = await qemuCheck(image);
      if (!dirty) assert.ok(check.status === 0 || check.status === 3, `cluster ${cs}, crash at ${at}/${log.length}: ${check.raw}`);
      const model = Buffer.alloc(size);
      for (let b = 0; b <= acked; b++) applyToModel(model, batchOps(seed, b, size), cs);
      const unknown = new Uint8Array(size);
      for (let b = acked + 1; b < batches; b++) markTouched(unknown, batchOps(seed, b, size));
      const raw = dir.file('crash.raw');
      await qemuImg('convert', '-O', 'raw', image, raw);
      const got = readFileSync(raw);
      for (let i = 0; i < size; i++) {
        if (!unknown[i] && got[i] !== model[i]) {
          assert.fail(`cluster ${cs}, crash at ${at}/${log.length} (flush ${acked} acknowledged): byte ${i} is ${got[i]}, expected ${model[i]}`);
        }
      }
      // A completed FUA write is durable without a flush: its bytes are there
      // unless a request issued after it touched them.
      for (let i = 0; i < at; i++) {
        const e = log[i]!;
        if (e.kind !== 'fua' || e.batch <= acked) continue;
        const ops = batchOps(seed, e.batch, size);
        const op = ops[e.index]!;
        if (op.kind !== 'write') continue;
        const later = new Uint8Array(size);
        markTouched(later, ops.slice(e.index + 1));
        for (let b = e.batch + 1; b < batches; b++) markTouched(later, batchOps(seed, b, size));
        const data = patternBuffer(op.len, op.seed);
        for (let k = 0; k < op.len; k++) {
          if (!later[op.off + k] && got[op.off + k] !== data[k]) {
            assert.fail(`cluster ${cs}, crash at ${at}: FUA write (batch ${e.batch} #${e.index}) lost at byte ${op.off + k}`);
          }
        }
      }
    }
  }
  dir.cleanup();
});
