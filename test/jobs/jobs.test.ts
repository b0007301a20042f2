/**
 * The job framework and its two jobs used on their own: backup (sync=none
 * with the copy-before-write filter) and active commit (with the
 * write-intercepting top filter).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BlockBackend } from '../../src/block/backend.js';
import { BlockError } from '../../src/block/errors.js';
import type { BlockNode } from '../../src/block/node.js';
import type { FaultNode } from '../../src/drivers/fault.js';
import { createGraph } from '../../src/drivers/index.js';
import { BackupJob } from '../../src/jobs/backup.js';
import { ClusterBitmap } from '../../src/jobs/bitmap.js';
import { ActiveCommitJob } from '../../src/jobs/commit.js';
import type { JobStatus } from '../../src/jobs/job.js';
import { jobRegistry } from '../../src/jobs/registry.js';

const MiB = 1024 * 1024;

function fill(n: number, b: number): Buffer {
  return Buffer.alloc(n, b);
}

async function readAll(node: { read(o: number, b: Buffer): Promise<void>; size: number }): Promise<Buffer> {
  const b = Buffer.alloc(node.size, 0xa5);
  await node.read(0, b);
  return b;
}

describe('cluster bitmap', () => {
  test('counts, ranges, scans and word boundaries', () => {
    const b = new ClusterBitmap(70);
    assert.equal(b.count, 0);
    assert.equal(b.nextSet(0), -1);
    b.setRange(30, 35);
    assert.equal(b.count, 5);
    assert.equal(b.anySet(0, 30), false);
    assert.equal(b.anySet(34, 70), true);
    assert.equal(b.nextSet(31), 31);
    assert.equal(b.nextSet(35), -1);
    b.set(69);
    assert.equal(b.nextSet(35), 69);
    b.clearRange(30, 35);
    b.clear(69);
    assert.equal(b.count, 0);
    b.setAll();
    assert.equal(b.count, 70);
    assert.equal(b.get(69), true);
    assert.equal(b.anySet(64, 70), true);
    b.clearAll();
    assert.equal(b.anySet(0, 70), false);
  });
});

describe('backup job (sync=none)', () => {
  test('inserts the filter above the source for every parent, copies old data, re-arms, and leaves on cancel', async () => {
    const g = createGraph();
    const src = await g.add({ driver: 'memory', 'node-name': 'src', size: 4 * MiB });
    const tgt = await g.add({ driver: 'memory', 'node-name': 'tgt', backing: 'src' });
    const bb = new BlockBackend('export', src);
    await bb.write(0, fill(4 * MiB, 0x11));
    const statuses: JobStatus[] = [];
    const job = new BackupJob(g, { source: src, target: tgt, keepOnSource: [] });
    job.events.on('status', (s) => statuses.push(s.status));
    await job.start();
    assert.equal(job.id, 'backup-src');
    assert.deepEqual(jobRegistry(g).queryBlockJobs().map((j) => [j.type, j.device, j.status]), [['backup', 'src', 'running']]);
    const cbw = job.cbw!;
    assert.equal(bb.node, cbw);
    assert.equal(tgt.backing, cbw, 'node parents move too');
    await bb.write(MiB, fill(100, 0x22));
    const snap = Buffer.alloc(65536);
    await tgt.read(MiB, snap);
    assert.ok(snap.equals(fill(65536, 0x11)), 'the target is a snapshot of the source');
    job.checkpoint();
    assert.equal(cbw.pendingClusters, 64);
    const outcome = await job.cancelAndWait();
    assert.deepEqual(outcome, { ok: false, cancelled: true, error: null });
    assert.deepEqual(statuses, ['running', 'aborting', 'concluded', 'null']);
    assert.equal(bb.node, src);
    assert.equal(tgt.backing, src);
    assert.equal(job.cbw, null);
    assert.deepEqual(jobRegistry(g).list({ includeInternal: true }), []);
    bb.detach();
    await g.closeAll();
  });

  test('refuses same or differently sized source and target', async () => {
    const g = createGraph();
    const a = await g.add({ driver: 'memory', 'node-name': 'a', size: MiB });
    const b = await g.add({ driver: 'memory', 'node-name': 'b', size: 2 * MiB });
    await assert.rejects(new BackupJob(g, { source: a, target: a }).start(), { message: 'Source and target cannot be the same' });
    await assert.rejects(new BackupJob(g, { source: a, target: b }).start(), { message: 'Source and target image have different sizes' });
    assert.deepEqual(jobRegistry(g).list({ includeInternal: true }), []);
    await g.closeAll();
  });
});

describe('active commit job', () => {
  async function chain(): Promise<{ g: ReturnType<typeof createGraph>; base: BlockNode; mid: BlockNode; top: BlockNode; dev: BlockBackend; baseFault: FaultNode }> {
    const g = createGraph();
    await g.add({ driver: 'memory', 'node-name': 'base-mem', size: 8 * MiB });
    const baseFault = await g.add({ driver: 'fault', 'node-name': 'base', file: 'base-mem' }) as FaultNode;
    await baseFault.write(0, fill(8 * MiB, 0x11));
    const mid = await g.add({ driver: 'memory', 'node-name': 'mid', backing: 'base' });
    const top = await g.add({ driver: 'memory', 'node-name': 'top', backing: 'mid' });
    await mid.write(2 * MiB, fill(MiB, 0x22));
    await top.write(0, fill(MiB, 0x33));
    const dev = new BlockBackend('dev', top);
    return { g, base: baseFault, mid, top, dev, baseFault };
  }

  test('commits top and middle into base while writes continue, then base replaces top', async () => {
    const { g, base, top, dev, baseFault } = await chain();
    const hold = baseFault.addRule({ op: 'write', hold: true });
    const job = new ActiveCommitJob(g, { top, base, granularity: 65536, maxChunk: 256 * 1024, parallel: 2 });
    const progress: number[] = [];
    job.events.on('progress', (p) => progress.push(p.current));
    let ready = false;
    job.events.on('ready', () => { ready = true; });
    await job.start();
    assert.equal(dev.node, job.topFilter, 'the device writes through the filter');
    await hold.waitForHits(1);
    // Writes land while copies are parked.
    await dev.write(512 * 1024, fill(4096, 0x44));
    await dev.write(5 * MiB, fill(MiB, 0x55));
    hold.remove();
    const outcome = await job.done;
    assert.equal(outcome.ok, true);
    assert.ok(ready);
    assert.equal(dev.node, base, 'base took the place of top');
    const expected = fill(8 * MiB, 0x11);
    expected.fill(0x33, 0, MiB);
    expected.fill(0x44, 512 * 1024, 512 * 1024 + 4096);
    expected.fill(0x22, 2 * MiB, 3 * MiB);
    expected.fill(0x55, 5 * MiB, 6 * MiB);
    assert.ok((await readAll(base)).equals(expected));
    assert.ok(progress.length > 0 && progress[progress.length - 1] === job.progress.total);
    dev.detach();
    await g.closeAll();
  });

  /** Runs a commit expected to fail with EIO at `where`, and checks top kept its place. */
  async function expectFailedInPlace(c: Awaited<ReturnType<typeof chain>>, where: [operation: string, node: string]): Promise<void> {
    const job = new ActiveCommitJob(c.g, { top: c.top, base: c.base });
    await job.start();
    const outcome = await job.done;
    assert.equal(outcome.ok, false);
    assert.equal(outcome.error?.code, 'EIO');
    assert.deepEqual(job.failure && [job.failure.operation, job.failure.node], where);
    assert.equal(c.dev.node, c.top);
    assert.equal(c.top.parents.size, 1, 'the filter is gone');
  }

  test('a failed copy fails the job and leaves top in place', async () => {
    const c = await chain();
    const { g, dev, baseFault } = c;
    baseFault.addRule({ op: 'write', offset: 2 * MiB, length: 1, errno: 'EIO' });
    await expectFailedInPlace(c, ['write', 'base']);
    dev.detach();
    await g.closeAll();
  });

  test('cancel leaves top in place and writable', async () => {
    const { g, base, top, dev, baseFault } = await chain();
    const hold = baseFault.addRule({ op: 'write', hold: true });
    const job = new ActiveCommitJob(g, { top, base });
    await job.start();
    await hold.waitForHits(1);
    job.cancel();
    hold.remove();
    const outcome = await job.done;
    assert.deepEqual(outcome, { ok: false, cancelled: true, error: null });
    assert.equal(dev.node, top);
    await dev.write(0, fill(10, 0x66));
    const b = Buffer.alloc(10);
    await top.read(0, b);
    assert.ok(b.equals(fill(10, 0x66)));
    dev.detach();
    await g.closeAll();
  });

  test('a write parked at the filter during the final swap lands in base', async () => {
    const { g, base, top, dev, baseFault } = await chain();
    const flushes = baseFault.addRule({ op: 'flush', hold: true });
    const job = new ActiveCommitJob(g, { top, base });
    await job.start();
    await flushes.waitForHits(1);
    flushes.release();
    // The second flush happens with the filter quiesced, just before the swap.
    await flushes.waitForHits(2);
    const parked = dev.write(7 * MiB, fill(4096, 0x77));
    flushes.remove();
    await parked;
    assert.equal((await job.done).ok, true);
    const b = Buffer.alloc(4096);
    await base.read(7 * MiB, b);
    assert.ok(b.equals(fill(4096, 0x77)), 'the parked write reached base');
    dev.detach();
    await g.closeAll();
  });

  /** Makes `node`'s allocation probes from `from` on fail with EIO. */
  function failStatus(node: BlockNode, from: number): void {
    const probe = node.blockStatus.bind(node);
    node.blockStatus = (offset, length) => (offset < from
      ? probe(offset, length)
      : Promise.reject(new BlockError('EIO', `status of ${node.nodeName} failed`)));
  }

  test('a failed allocation probe fails the job before any copy, and leaves top in place', async () => {
    const c = await chain();
    const { g, base, mid, dev } = c;
    failStatus(mid, 2 * MiB);
    await expectFailedInPlace(c, ['status', 'top']);
    assert.ok((await readAll(base)).equals(fill(8 * MiB, 0x11)), 'nothing was copied');
    dev.detach();
    await g.closeAll();
  });

  test('refuses a base outside the chain, itself, or read-only', async () => {
    const { g, base, top, mid, dev } = await chain();
    const other = await g.add({ driver: 'memory', 'node-name': 'other', size: 8 * MiB });
    await assert.rejects(new ActiveCommitJob(g, { top, base: other }).start(), { message: "'other' is not in the backing chain of 'top'" });
    await assert.rejects(new ActiveCommitJob(g, { top, base: top }).start(), { message: 'Cannot commit an image into itself' });
    mid.readOnly = true;
    await assert.rejects(new ActiveCommitJob(g, { top, base: mid }).start(), { message: "Block node 'mid' is read-only and its driver (memory) cannot reopen it read-write" });
    mid.readOnly = false;
    assert.equal(dev.node, top);
    void base;
    dev.detach();
    await g.closeAll();
  });
});
