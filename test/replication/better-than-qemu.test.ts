/**
 * Where colo-blk deliberately does better than QEMU (docs/replication.md,
 * "Deviations"), one test per point.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAllocatedAbove } from '../../src/block/chain.js';
import { MiB, expectPattern, fill, localFault, primaryFixture, secondaryFixture } from './fixtures.js';

test('stop without failover on a running secondary is clean (QEMU: "Backup job was cancelled unexpectedly")', async () => {
  const f = await secondaryFixture('memory', { size: 8 * MiB });
  try {
    await f.registry.startAll('secondary');
    await f.localBB.write(2 * MiB, fill(MiB, 0x22));
    await f.top.write(0, fill(MiB, 0x33));
    await f.registry.setReplication({ enable: false, primary: false });
    assert.equal(f.repl.stage, 'done');
    assert.deepEqual(await f.registry.queryStatus(), { error: false }, 'no latched error');
    assert.deepEqual(f.registry.implicitNodes(), [], 'the backup job and its filter are gone');
    assert.equal(f.localBB.node, f.local);
    assert.equal(f.repl.file, f.local, 'the node now reads and writes the secondary disk');
    assert.equal(f.repl.children.has('hidden disk'), false);
    // The view equals the secondary disk, which is the primary's last state.
    const view = Buffer.alloc(8 * MiB);
    const disk = Buffer.alloc(8 * MiB, 1);
    await f.top.read(0, view);
    await f.localBB.read(0, disk);
    assert.ok(view.equals(disk));
    await expectPattern(f.top, 2 * MiB, MiB, 0x22);
    await expectPattern(f.top, 0, MiB, 0x11, "the SVM's writes since the checkpoint are discarded");
  } finally {
    await f.cleanup();
  }
});

test('a healthy failover commit reports no error (QEMU: "I/O error occurred" until it ends)', async () => {
  const f = await secondaryFixture('memory', { size: 8 * MiB, faultyLocal: true });
  try {
    await f.registry.startAll('secondary');
    await f.top.write(0, fill(2 * MiB, 0x33));
    const hold = localFault(f).addRule({ op: 'write', hold: true });
    await f.registry.setReplication({ enable: false, primary: false, failover: true });
    await hold.waitForHits(1);
    assert.equal(f.repl.stage, 'failover');
    assert.deepEqual(await f.registry.queryStatus(), { error: false });
    const [st] = f.registry.status();
    assert.equal(st!.commit?.status, 'running');
    assert.equal(st!.commit?.len, 2 * MiB);
    hold.remove();
    await f.registry.settled();
    assert.deepEqual(await f.registry.queryStatus(), { error: false });
  } finally {
    await f.cleanup();
  }
});

test('an error report names the disk, the operation and the errno, beside QEMU\'s text', async () => {
  const f = await primaryFixture('memory', { size: MiB, fault: true });
  try {
    await f.registry.startAll('primary');
    const fault = f.graph.get('pdisk-fault') as import('../../src/drivers/fault.js').FaultNode;
    fault.addRule({ op: 'write', errno: 'ECONNRESET' });
    await f.bb.write(0, fill(512, 1));
    assert.deepEqual(await f.registry.queryStatus(), { error: true, desc: 'I/O error occurred' });
    const [error] = f.repl.status().errors;
    assert.equal(error!.disk, 'pdisk-fault');
    assert.equal(error!.role, 'nbd');
    assert.equal(error!.operation, 'write');
    assert.equal(error!.errno, 'ECONNRESET');
    assert.equal(error!.errnoNumber, 104);
    assert.equal(error!.guestVisible, false, 'the primary swallowed it');
  } finally {
    await f.cleanup();
  }
});

test('FAILOVER_FAILED keeps the primary data it could not commit reachable and says why', async () => {
  const f = await secondaryFixture('memory', { size: 4 * MiB, faultyLocal: true });
  try {
    await f.registry.startAll('secondary');
    await f.top.write(0, fill(MiB, 0x33));
    localFault(f).addRule({ op: 'write', errno: 'ENOSPC' });
    await f.registry.stopAll(true);
    await f.registry.settled();
    const [error] = f.repl.status().errors;
    assert.deepEqual([error!.disk, error!.role, error!.operation, error!.errno], ['local-fault', 'secondary', 'commit', 'ENOSPC']);
    assert.deepEqual(f.repl.status().commit && { ...f.repl.status().commit, error: undefined },
      { status: 'failed', offset: 0, len: MiB, error: undefined });
    assert.equal((await isAllocatedAbove(f.active, f.local, 0, MiB)).allocated, true, 'the overlays are kept');
  } finally {
    await f.cleanup();
  }
});
