/**
 * Failover (spec 3 and 5): the active commit of active and hidden into the
 * secondary disk, its progress and events, writes during the commit, and the
 * FAILOVER_FAILED routing with the [X] verification of section 3 reproduced
 * on a secondary disk whose writes at sector 0 fail.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isAllocatedAbove } from '../../src/block/chain.js';
import type { ReplicationEvents } from '../../src/replication/events.js';
import {
  DISK_KINDS, MiB, expectPattern, fill, localFault, secondaryFixture, until,
} from './fixtures.js';

describe('FAILOVER_FAILED (spec section 3, reproduced)', () => {
  test('a failed commit leaves the chain; writes are routed by allocation', async () => {
    const f = await secondaryFixture('memory', { size: 64 * MiB, faultyLocal: true });
    try {
      await f.repl.start('secondary');
      // Local [32M,48M) rewritten with 0x22: hidden holds 0x11 there. The SVM writes 0x33 to [0,16M).
      await f.localBB.write(32 * MiB, fill(16 * MiB, 0x22));
      await f.top.write(0, fill(16 * MiB, 0x33));
      // Every write touching sector 0 of the secondary disk fails, so the commit fails.
      const fault = localFault(f);
      fault.addRule({ op: 'write', offset: 0, length: 512, errno: 'EIO' });
      await f.repl.stop(true);
      await f.repl.failoverSettled();
      assert.equal(f.repl.stage, 'failover-failed');

      assert.deepEqual(await f.registry.queryStatus(), { error: true, desc: 'I/O error occurred' });
      await assert.rejects(f.repl.stop(false), { message: 'Block replication is not running' });
      await assert.rejects(f.repl.start('secondary'), { message: 'Block replication is running or done' });
      await assert.rejects(f.repl.checkpoint(), { message: 'Backup job was cancelled unexpectedly' });
      const [detail] = f.repl.status().errors;
      assert.deepEqual({ disk: detail?.disk, role: detail?.role, operation: detail?.operation, errno: detail?.errno },
        { disk: 'local-fault', role: 'secondary', operation: 'commit', errno: 'EIO' });

      // The SVM view is intact.
      await expectPattern(f.top, 0, 16 * MiB, 0x33);
      await expectPattern(f.top, 16 * MiB, 16 * MiB, 0x11);
      await expectPattern(f.top, 32 * MiB, 16 * MiB, 0x11);

      // Allocated nowhere above the secondary disk: straight to it.
      await f.top.write(16 * MiB, fill(MiB, 0x44));
      await expectPattern(f.localBB, 16 * MiB, MiB, 0x44, 'went to the secondary disk');
      assert.equal((await isAllocatedAbove(f.active, f.local, 16 * MiB, MiB)).allocated, false, 'active stays unallocated');

      // Allocated in hidden: to the active disk.
      await f.top.write(32 * MiB, fill(MiB, 0x45));
      await expectPattern(f.top, 32 * MiB, MiB, 0x45);
      await expectPattern(f.localBB, 32 * MiB, MiB, 0x22, 'the secondary disk keeps 0x22');
      await expectPattern(f.active, 32 * MiB, MiB, 0x45, 'active has it');

      // Half in active, half nowhere: split.
      await f.top.write(15 * MiB, fill(2 * MiB, 0x46));
      await expectPattern(f.top, 15 * MiB, 2 * MiB, 0x46);
      await expectPattern(f.localBB, 16 * MiB, MiB, 0x46, 'the unallocated half went to the secondary disk');
      await expectPattern(f.localBB, 15 * MiB, MiB, 0x11, 'the allocated half did not');
      assert.equal((await isAllocatedAbove(f.active, f.local, 16 * MiB, MiB)).allocated, false);
    } finally {
      await f.cleanup();
    }
  });

  test('routed writes are serialised: a copy-up in the active disk cannot hide a write sent to the secondary disk', async () => {
    // Active clusters of 128 KiB over a hidden disk of 64 KiB: one active
    // cluster spans a range allocated in hidden and one allocated nowhere.
    const f = await secondaryFixture('memory', { size: 4 * MiB, faultyLocal: true, activeCluster: 128 * 1024 });
    try {
      await f.repl.start('secondary');
      const X = 2 * MiB;
      await f.localBB.write(X, fill(64 * 1024, 0x22)); // hidden now holds [X, X+64K)
      await f.top.write(0, fill(4096, 0x33));
      const fault = localFault(f);
      const failCommit = fault.addRule({ op: 'write', offset: 0, length: 512, errno: 'EIO' });
      await f.repl.stop(true);
      await f.repl.failoverSettled();
      failCommit.remove();
      assert.equal(f.repl.stage, 'failover-failed');

      // W2 goes to the secondary disk (nothing above it there) and is parked on its way.
      const hold = fault.addRule({ op: 'write', offset: X + 64 * 1024, length: 4096, hold: true, count: 1 });
      const w2 = f.top.write(X + 64 * 1024, fill(4096, 0x62));
      await hold.waitForHits(1);
      // W1 goes to the active disk, whose copy-up reads the rest of the 128 KiB cluster.
      let w1Done = false;
      const w1 = f.top.write(X, fill(4096, 0x61)).then(() => { w1Done = true; });
      const sec = f.repl.secondarySide!;
      await until(() => w1Done || sec.routedWritesWaiting > 0, 'W1 to finish or to wait for W2');
      assert.equal(w1Done, false, 'W1 must wait for the overlapping routed write');
      hold.release();
      await Promise.all([w1, w2]);
      await expectPattern(f.top, X, 4096, 0x61);
      await expectPattern(f.top, X + 64 * 1024, 4096, 0x62, 'W2 is visible, not shadowed by a stale copy-up');
    } finally {
      await f.cleanup();
    }
  });

  test('a commit that cannot start ends in FAILOVER_FAILED with the cause latched', async () => {
    const f = await secondaryFixture('memory', { size: 4 * MiB });
    try {
      await f.repl.start('secondary');
      f.local.readOnly = true;
      await assert.rejects(f.repl.stop(true), { message: "Block node 'local' is read-only and its driver (memory) cannot reopen it read-write" });
      assert.equal(f.repl.stage, 'failover-failed');
      assert.deepEqual(f.repl.status().errors.map((e) => [e.disk, e.operation, e.errno]), [['local', 'commit', 'ENOTSUP']]);
      f.local.readOnly = false;
    } finally {
      await f.cleanup();
    }
  });
});

describe('closing a replication node', () => {
  test('while RUNNING: the backup job stops and the filter leaves; nothing is left registered', async () => {
    const f = await secondaryFixture('memory', { size: 4 * MiB });
    await f.repl.start('secondary');
    const { jobRegistry } = await import('../../src/jobs/registry.js');
    await f.cleanup();
    assert.ok(f.repl.isClosed && f.local.isClosed);
    assert.deepEqual(f.registry.list(), []);
    assert.deepEqual(jobRegistry(f.graph).list({ includeInternal: true }), []);
  });

  test('while FAILOVER: the commit is cancelled and the node ends in FAILOVER_FAILED, as QEMU does', async () => {
    const f = await secondaryFixture('memory', { size: 4 * MiB, faultyLocal: true });
    const { jobRegistry } = await import('../../src/jobs/registry.js');
    await f.repl.start('secondary');
    await f.top.write(0, fill(2 * MiB, 0x33));
    const hold = localFault(f).addRule({ op: 'write', hold: true });
    await f.repl.stop(true);
    await hold.waitForHits(1);
    const commit = jobRegistry(f.graph).get('colo-commit-repl')!;
    const stages: string[] = [];
    f.registry.events.on('stage', (e) => stages.push(e.to));
    f.top.detach();
    f.localBB.detach();
    const closing = f.graph.closeAll();
    await until(() => commit.status === 'aborting', 'close to cancel the commit');
    // The cancelled job still waits for its copies in flight; let them finish.
    hold.remove();
    await closing;
    assert.deepEqual(stages, ['failover-failed'], 'replication_done with an error');
    assert.ok(f.repl.isClosed);
    assert.deepEqual(jobRegistry(f.graph).list({ includeInternal: true }), []);
    f.factory.cleanup();
  });
});

for (const kind of DISK_KINDS) {
  describe(`failover (${kind})`, () => {
    test('commits active and hidden, reports progress, and swaps the secondary disk in', async () => {
      const f = await secondaryFixture(kind, { size: 16 * MiB });
      const events: Array<keyof ReplicationEvents> = [];
      const progress: Array<[number, number]> = [];
      const stages: string[] = [];
      f.registry.events.on('job-progress', (p) => { if (p.type === 'commit') progress.push([p.current, p.total]); });
      f.registry.events.on('stage', (s) => stages.push(`${s.from}->${s.to}`));
      f.registry.events.on('job-completed', (c) => { if (c.type === 'commit') events.push('job-completed'); });
      try {
        await f.registry.startAll('secondary');
        await f.localBB.write(8 * MiB, fill(4 * MiB, 0x22));
        await f.top.write(0, fill(2 * MiB, 0x33));
        await f.registry.setReplication({ enable: false, primary: false, failover: true });
        assert.equal(f.repl.stage, 'failover');
        assert.equal(f.registry.implicitNodes().map((n) => n.driver).join(), 'mirror_top');
        await f.registry.settled();
        assert.equal(f.repl.stage, 'done');
        assert.deepEqual(stages, ['none->running', 'running->failover', 'failover->done']);
        assert.deepEqual(events, ['job-completed']);
        assert.ok(progress.length > 0, 'progress was reported');
        const last = progress[progress.length - 1]!;
        assert.equal(last[0], last[1], 'done == total at the end');
        assert.equal(last[0], 6 * MiB, 'exactly what active and hidden held');
        for (let i = 1; i < progress.length; i++) assert.ok(progress[i]![0] >= progress[i - 1]![0], 'monotonic');
        assert.equal(f.repl.file, f.local);
        assert.deepEqual(f.registry.implicitNodes(), []);
        assert.equal(f.localBB.node, f.local, 'no filter left above the secondary disk');
        assert.ok(f.active.isClosed && f.hidden.isClosed, 'inline overlays are released');
        await expectPattern(f.localBB, 0, 2 * MiB, 0x33);
        await expectPattern(f.localBB, 2 * MiB, 14 * MiB, 0x11, 'the primary writes since the checkpoint rolled back');
        assert.deepEqual(await f.registry.queryStatus(), { error: false });
      } finally {
        await f.cleanup();
      }
    });

    test('writes during the commit are never lost', async () => {
      const f = await secondaryFixture(kind, { size: 16 * MiB, faultyLocal: kind === 'memory' });
      try {
        await f.repl.start('secondary');
        await f.localBB.write(4 * MiB, fill(4 * MiB, 0x22));
        await f.top.write(0, fill(4 * MiB, 0x33));
        const hold = kind === 'memory' ? localFault(f).addRule({ op: 'write', hold: true }) : null;
        await f.repl.stop(true);
        if (hold) await hold.waitForHits(1);
        // While the commit is (held) in flight: overwrite committed ranges, hidden ranges, and new ranges.
        const writes = [
          f.top.write(MiB, fill(MiB, 0x51)),
          f.top.write(5 * MiB + 4096, fill(8192, 0x52)),
          f.top.write(12 * MiB, fill(2 * MiB, 0x53)),
          f.top.writeZeroes(14 * MiB, MiB),
        ];
        assert.equal(f.repl.stage, 'failover');
        f.registry.getErrorAll(); // no spurious error while a healthy commit runs
        hold?.remove();
        await Promise.all(writes);
        await f.repl.failoverSettled();
        assert.equal(f.repl.stage, 'done');
        const expected = Buffer.alloc(16 * MiB, 0x11);
        expected.fill(0x33, 0, 4 * MiB);
        expected.fill(0x51, MiB, 2 * MiB);
        expected.fill(0x52, 5 * MiB + 4096, 5 * MiB + 4096 + 8192);
        expected.fill(0x53, 12 * MiB, 14 * MiB);
        expected.fill(0, 14 * MiB, 15 * MiB);
        const got = Buffer.alloc(16 * MiB, 0xa5);
        await f.localBB.read(0, got);
        assert.ok(got.equals(expected), 'the secondary disk equals the view');
      } finally {
        await f.cleanup();
      }
    });
  });
}
