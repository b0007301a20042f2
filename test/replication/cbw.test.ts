/**
 * Copy-before-write as replication uses it (spec 4.2): granularity, first
 * write wins, write-zeroes and discard from the primary, zero clusters, copy
 * failures, parallel copies, and that the secondary's own writes never copy.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BlockBackend } from '../../src/block/backend.js';
import { Status } from '../../src/block/node.js';
import { createGraph } from '../../src/drivers/index.js';
import { ReplicationNode } from '../../src/replication/node.js';
import type { BlockNode } from '../../src/block/node.js';
import {
  DISK_KINDS, KiB, MiB, expectPattern, fill, localFault, secondaryFixture, type SecondaryFixture,
} from './fixtures.js';

const SIZE = 16 * MiB;

/** Allocated [start, end) runs of one layer. */
async function allocatedRuns(node: BlockNode): Promise<Array<[number, number]>> {
  const runs: Array<[number, number]> = [];
  for (let off = 0; off < node.size;) {
    const st = await node.blockStatus(off, node.size - off);
    if (st.flags & Status.ALLOCATED) {
      const last = runs[runs.length - 1];
      if (last && last[1] === off) last[1] = off + st.length;
      else runs.push([off, off + st.length]);
    }
    off += st.length;
  }
  return runs;
}

function cbwOf(f: SecondaryFixture) {
  const cbw = f.repl.secondarySide!.backup!.cbw!;
  assert.ok(cbw);
  return cbw;
}

for (const kind of DISK_KINDS) {
  describe(`copy-before-write (${kind})`, () => {
    test('a 512-byte primary write allocates exactly one 64 KiB cluster in hidden', async () => {
      const f = await secondaryFixture(kind, { size: SIZE });
      try {
        await f.repl.start('secondary');
        assert.equal(f.localBB.node, cbwOf(f), 'the export now writes through the filter');
        assert.equal(f.hidden.backing, cbwOf(f), "the hidden disk's backing goes through it too");
        await f.localBB.write(MiB + 512, fill(512, 0x22));
        assert.deepEqual(await allocatedRuns(f.hidden), [[MiB, MiB + 64 * KiB]]);
        assert.deepEqual(await allocatedRuns(f.active), []);
        await expectPattern(f.top, MiB, 64 * KiB, 0x11, 'the view keeps the old data');
        await expectPattern(f.hidden, MiB, 64 * KiB, 0x11, 'hidden holds the old cluster');
      } finally {
        await f.cleanup();
      }
    });

    test('first write wins until the next checkpoint re-arms the cluster', async () => {
      const f = await secondaryFixture(kind, { size: SIZE });
      try {
        await f.repl.start('secondary');
        await f.localBB.write(2 * MiB, fill(4 * KiB, 0x22));
        await f.localBB.write(2 * MiB, fill(4 * KiB, 0x23));
        assert.equal(cbwOf(f).stats.copies, 1, 'the second write found the cluster saved');
        await expectPattern(f.top, 2 * MiB, 4 * KiB, 0x11);
        await f.repl.checkpoint();
        assert.deepEqual(await allocatedRuns(f.hidden), [], 'the checkpoint emptied hidden');
        await expectPattern(f.top, 2 * MiB, 4 * KiB, 0x23, 'after the checkpoint the view is the primary');
        await f.localBB.write(2 * MiB, fill(4 * KiB, 0x24));
        assert.equal(cbwOf(f).stats.copies, 2, 're-armed: copied again');
        await expectPattern(f.top, 2 * MiB, 4 * KiB, 0x23);
      } finally {
        await f.cleanup();
      }
    });

    test('primary write-zeroes and discard copy the old data first', async () => {
      const f = await secondaryFixture(kind, { size: SIZE });
      try {
        await f.repl.start('secondary');
        await f.localBB.writeZeroes(4 * MiB, 64 * KiB);
        await f.localBB.discard(8 * MiB, 64 * KiB);
        await expectPattern(f.localBB, 4 * MiB, 64 * KiB, 0, 'zeroes landed');
        await expectPattern(f.top, 4 * MiB, 64 * KiB, 0x11, 'the view after write-zeroes');
        await expectPattern(f.top, 8 * MiB, 64 * KiB, 0x11, 'the view after discard');
        assert.deepEqual(await allocatedRuns(f.hidden), [[4 * MiB, 4 * MiB + 64 * KiB], [8 * MiB, 8 * MiB + 64 * KiB]]);
      } finally {
        await f.cleanup();
      }
    });

    test('a cluster that reads as zeroes is still allocated in hidden', async () => {
      const f = await secondaryFixture(kind, { size: SIZE, fill: null });
      try {
        await f.repl.start('secondary');
        await f.localBB.write(3 * MiB, fill(64 * KiB, 0x22));
        assert.deepEqual(await allocatedRuns(f.hidden), [[3 * MiB, 3 * MiB + 64 * KiB]]);
        await expectPattern(f.top, 3 * MiB, 64 * KiB, 0, 'zeroes shadow the new data');
      } finally {
        await f.cleanup();
      }
    });

    test('the secondary view never triggers a copy', async () => {
      const f = await secondaryFixture(kind, { size: SIZE });
      try {
        await f.repl.start('secondary');
        await f.top.write(0, fill(2 * MiB, 0x33));
        await f.top.writeZeroes(5 * MiB, MiB);
        await f.top.read(0, Buffer.alloc(SIZE));
        assert.equal(cbwOf(f).stats.copies, 0);
        assert.deepEqual(await allocatedRuns(f.hidden), []);
        await expectPattern(f.localBB, 0, SIZE, 0x11, 'nothing reached the secondary disk');
      } finally {
        await f.cleanup();
      }
    });
  });
}

describe('copy-before-write failures and concurrency', () => {
  test('a failed copy fails the triggering write and leaves the cluster to copy again', async () => {
    const f = await secondaryFixture('memory', { size: SIZE, faultyLocal: true });
    try {
      await f.repl.start('secondary');
      const fault = localFault(f);
      const rule = fault.addRule({ op: 'read', offset: 5 * MiB, length: 1, errno: 'EIO', count: 1 });
      await assert.rejects(f.localBB.write(5 * MiB + 100, fill(100, 0x22)), (e: unknown) => {
        assert.equal((e as { code?: string }).code, 'EIO');
        assert.match((e as Error).message, /copy-before-write of \[5242880, 5308416\) failed to read local-fault/);
        return true;
      });
      await expectPattern(f.localBB, 5 * MiB, 64 * KiB, 0x11, 'the new data did not land');
      const stats = cbwOf(f).stats;
      assert.equal(stats.copyErrors, 1);
      assert.deepEqual({ stage: stats.lastError?.stage, node: stats.lastError?.node, code: stats.lastError?.code },
        { stage: 'read', node: 'local-fault', code: 'EIO' });
      // The pair diverged: colo-blk latches it on the secondary too (QEMU does not).
      assert.deepEqual(f.repl.status().errors.map((e) => [e.disk, e.role, e.operation, e.errno]),
        [['local-fault', 'secondary', 'copy-before-write', 'EIO']]);
      assert.deepEqual(await f.registry.queryStatus(), { error: true, desc: 'I/O error occurred' });
      rule.remove();
      await f.localBB.write(5 * MiB + 100, fill(100, 0x22));
      await expectPattern(f.top, 5 * MiB, 64 * KiB, 0x11);
      await expectPattern(f.localBB, 5 * MiB + 100, 100, 0x22);
      // A write that fails on the secondary disk itself is latched as well.
      fault.addRule({ op: 'write', offset: 5 * MiB, length: 1, errno: 'ENOSPC', count: 1 });
      await assert.rejects(f.localBB.write(5 * MiB, fill(10, 0x23)), { code: 'ENOSPC' });
      const [latched] = f.repl.status().errors;
      assert.equal(latched!.count, 2, 'same disk: counted on the first entry');
    } finally {
      await f.cleanup();
    }
  });

  test('copies of different clusters run in parallel; a write to a cluster being copied waits for that copy', async () => {
    const f = await secondaryFixture('memory', { size: SIZE, faultyLocal: true });
    try {
      await f.repl.start('secondary');
      const fault = localFault(f);
      // Park the copy's read of cluster A.
      const hold = fault.addRule({ op: 'read', offset: 0, length: 64 * KiB, hold: true });
      let aDone = false;
      let a2Done = false;
      const a = f.localBB.write(0, fill(4 * KiB, 0x22)).then(() => { aDone = true; });
      await hold.waitForHits(1);
      // Cluster B copies and completes while A's copy is parked.
      await f.localBB.write(MiB, fill(4 * KiB, 0x23));
      assert.equal(aDone, false);
      // A second write to A waits on A's copy (it does not start one of its own).
      const a2 = f.localBB.write(8 * KiB, fill(4 * KiB, 0x24)).then(() => { a2Done = true; });
      assert.equal(cbwOf(f).copiesInFlight, 1);
      hold.remove();
      await Promise.all([a, a2]);
      assert.ok(aDone && a2Done);
      assert.equal(hold.hits, 1, 'cluster A was read once: one copy served both writes');
      assert.equal(cbwOf(f).stats.copies, 2);
      await expectPattern(f.top, 0, 64 * KiB, 0x11);
      await expectPattern(f.top, MiB, 64 * KiB, 0x11);
    } finally {
      await f.cleanup();
    }
  });

  test('copy granularity follows a hidden disk with bigger clusters', async () => {
    const g = createGraph();
    const local = await g.add({ driver: 'memory', 'node-name': 'local', size: SIZE });
    const bb = new BlockBackend('nbd', local);
    await bb.write(0, fill(SIZE, 0x11));
    await g.add({ driver: 'memory', 'node-name': 'hidden', backing: 'local', 'cluster-size': 256 * KiB });
    await g.add({ driver: 'memory', 'node-name': 'active', backing: 'hidden' });
    const repl = await g.add({ driver: 'replication', 'node-name': 'r', mode: 'secondary', 'top-id': 'r', file: 'active' });
    assert.ok(repl instanceof ReplicationNode);
    await repl.start('secondary');
    await bb.write(MiB + 512, fill(512, 0x22));
    assert.deepEqual(await allocatedRuns(g.get('hidden')), [[MiB, MiB + 256 * KiB]]);
    assert.equal(repl.secondarySide!.backup!.cbw!.copyClusterSize, 256 * KiB);
    bb.detach();
    await g.closeAll();
  });
});
