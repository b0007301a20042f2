/**
 * The registry (QEMU's ReplicationOps list): newest-first order, stop at the
 * first error, the xen-* QMP wrappers' quirks, detailed status, events, and
 * the job list.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockBackend } from '../../src/block/backend.js';
import { createGraph } from '../../src/drivers/index.js';
import { jobRegistry } from '../../src/jobs/registry.js';
import type { ReplicationNode } from '../../src/replication/node.js';
import { replicationRegistry } from '../../src/replication/registry.js';
import { MiB, fill, primaryFixture, secondaryFixture } from './fixtures.js';

test('with no replication node every operation succeeds', async () => {
  const g = createGraph();
  const r = replicationRegistry(g);
  await r.startAll('primary');
  await r.checkpointAll();
  r.getErrorAll();
  await r.stopAll(false);
  assert.deepEqual(await r.queryStatus(), { error: false });
  assert.deepEqual(r.status(), []);
  assert.equal(replicationRegistry(g), r, 'one registry per graph');
  assert.notEqual(replicationRegistry(createGraph()), r);
});

test('nodes are visited newest first and the first error stops the walk', async () => {
  const g = createGraph();
  for (const n of ['a', 'b', 'c']) {
    await g.add({ driver: 'memory', 'node-name': `${n}-disk`, size: MiB });
    await g.add({ driver: 'replication', 'node-name': n, mode: 'primary', file: `${n}-disk` });
  }
  const r = replicationRegistry(g);
  assert.deepEqual(r.list().map((n) => n.nodeName), ['c', 'b', 'a']);
  const b = g.get('b') as ReplicationNode;
  await b.start('primary');
  await assert.rejects(r.startAll('primary'), { message: 'Block replication is running or done' });
  assert.deepEqual(r.list().map((n) => n.stage), ['running', 'running', 'none'], 'c started, b failed, a was never visited');
  assert.deepEqual(await r.queryStatus(), { error: true, desc: 'Block replication is not running' }, "a's answer");
  await g.delete('c');
  assert.deepEqual(r.list().map((n) => n.nodeName), ['b', 'a'], 'closing a node unregisters it');
  await g.closeAll();
  assert.deepEqual(r.list(), []);
});

test('xen-set-replication: failover only for stop; failover=true swallows every error', async () => {
  const f = await primaryFixture('memory', { size: MiB });
  try {
    await assert.rejects(f.registry.setReplication({ enable: true, primary: true, failover: true }),
      { message: "Parameter 'failover' is only for stopping replication" });
    await assert.rejects(f.registry.setReplication({ enable: true, primary: true, failover: false }),
      { message: "Parameter 'failover' is only for stopping replication" });
    assert.equal(f.repl.stage, 'none');
    // Stage NONE: the stop fails, but QMP returns {} with failover=true.
    await f.registry.setReplication({ enable: false, primary: true, failover: true });
    await assert.rejects(f.registry.setReplication({ enable: false, primary: true }), { message: 'Block replication is not running' });
    await assert.rejects(f.registry.setReplication({ enable: false, primary: false, failover: false }), { message: 'Block replication is not running' });
    // `primary` picks the mode for start.
    await assert.rejects(f.registry.setReplication({ enable: true, primary: false }),
      { message: "The parameter mode's value is invalid, needs 0, but got 1" });
    await f.registry.setReplication({ enable: true, primary: true });
    assert.deepEqual(await f.registry.queryStatus(), { error: false });
    await f.registry.doCheckpoint();
    await f.registry.setReplication({ enable: false, primary: true });
    assert.equal(f.repl.stage, 'done');
  } finally {
    await f.cleanup();
  }
});

test('a primary forwarding error is latched with its disk, operation and errno; the writer is told success', async () => {
  const f = await primaryFixture('memory', { size: MiB, fault: true });
  const latched: string[] = [];
  f.registry.events.on('error-latched', (e) => latched.push(`${e.node}:${e.error.disk}:${e.error.operation}:${e.error.errno}`));
  try {
    await f.registry.startAll('primary');
    const fault = f.graph.get('pdisk-fault') as import('../../src/drivers/fault.js').FaultNode;
    fault.addRule({ op: 'write', offset: 0, length: 4096, errno: 'ENOSPC' });
    fault.addRule({ op: 'write', offset: 4096, length: 4096, errno: 'EIO' });
    await f.bb.write(0, fill(4096, 1));
    await f.bb.write(4096, fill(4096, 2));
    await f.bb.write(8192, fill(4096, 3));
    assert.deepEqual(await f.registry.queryStatus(), { error: true, desc: 'I/O error occurred' }, "QEMU's text, unchanged");
    const [st] = f.registry.status();
    assert.equal(st!.stage, 'running');
    assert.deepEqual(st!.errors.map((e) => ({ ...e, since: undefined })), [{
      disk: 'pdisk-fault', role: 'nbd', operation: 'write', errno: 'ENOSPC', errnoNumber: 28,
      desc: 'fault injected by pdisk-fault: write [0, 4096)', since: undefined, count: 2, guestVisible: false,
    }], 'one entry per disk: the first error, counted twice');
    assert.deepEqual(latched, ['xxx:pdisk-fault:write:ENOSPC'], 'one event for the first error');
    // A stop clears the error (QEMU: error := 0 on primary stop).
    await f.registry.stopAll(true);
    assert.deepEqual(await f.registry.queryStatus(), { error: false });
  } finally {
    await f.cleanup();
  }
});

test('primary flush errors propagate and are latched; FUA writes flush after the write', async () => {
  const f = await primaryFixture('memory', { size: MiB, fault: true });
  try {
    await f.repl.start('primary');
    const fault = f.graph.get('pdisk-fault') as import('../../src/drivers/fault.js').FaultNode;
    const flushes = fault.addRule({ op: 'flush' });
    await f.bb.write(0, fill(512, 7), 1 /* Req.FUA */);
    assert.equal(flushes.hits, 1, 'FUA became a flush');
    fault.addRule({ op: 'flush', errno: 'EIO', count: 1 });
    await assert.rejects(f.bb.flush(), { code: 'EIO' });
    assert.deepEqual(f.repl.status().errors.map((e) => [e.operation, e.guestVisible]), [['flush', true]]);
  } finally {
    await f.cleanup();
  }
});

test('detailed status of a running secondary', async () => {
  const f = await secondaryFixture('memory', { size: 4 * MiB });
  try {
    await f.registry.startAll('secondary');
    await f.localBB.write(0, fill(100, 0x22));
    await f.top.write(MiB, fill(MiB, 0x33));
    const [st] = f.registry.status();
    assert.ok(typeof st!.lastCheckpointUs === 'number' && st!.lastCheckpointUs >= 0);
    assert.deepEqual({ ...st, lastCheckpointUs: 0 }, {
      nodeName: 'repl',
      mode: 'secondary',
      stage: 'running',
      topId: 'secondary-id',
      errors: [],
      checkpoints: 1,
      lastCheckpointUs: 0,
      disks: { active: 'active', hidden: 'hidden', secondary: 'local' },
      activeBytes: MiB,
      hiddenBytes: 64 * 1024,
      copyBeforeWrite: { clusterSize: 65536, pendingClusters: 63, copies: 1, copiedBytes: 65536, copyErrors: 0 },
    });
    await f.registry.checkpointAll();
    const [after] = f.registry.status();
    assert.deepEqual([after!.activeBytes, after!.hiddenBytes, after!.checkpoints], [0, 0, 2]);
    assert.equal(after!.copyBeforeWrite!.pendingClusters, 64);
    // The counters agree with what the disks really hold.
    await f.top.write(3 * MiB + 100, fill(10, 1));
    const { allocatedBytes } = await import('./disk-usage.js');
    assert.equal(f.registry.status()[0]!.activeBytes, await allocatedBytes(f.active));
  } finally {
    await f.cleanup();
  }
});

test('internal jobs are hidden from query-block-jobs; the op blocker names the top', async () => {
  const f = await secondaryFixture('memory', { size: 4 * MiB });
  try {
    await f.registry.startAll('secondary');
    const jobs = jobRegistry(f.graph);
    assert.deepEqual(jobs.queryBlockJobs(), []);
    const internal = jobs.list({ includeInternal: true });
    assert.deepEqual(internal.map((j) => [j.id, j.type, j.status]), [['colo-backup-repl', 'backup', 'running']]);
    assert.equal(f.registry.opBlocker(f.repl), 'Block device is in use by internal backup job');
    assert.equal(f.registry.opBlocker(f.local), undefined);
    assert.equal(f.registry.implicitNodes()[0]!.driver, 'copy-before-write');
    await f.registry.stopAll(true);
    assert.equal(f.registry.opBlocker(f.repl), undefined, 'blockers go with the backup job');
    await f.registry.settled();
    assert.deepEqual(jobs.list({ includeInternal: true }), []);
  } finally {
    await f.cleanup();
  }
});

test('a backup job that ends unexpectedly latches an error, as QEMU does', async () => {
  const f = await secondaryFixture('memory', { size: 4 * MiB });
  try {
    await f.repl.start('secondary');
    const job = jobRegistry(f.graph).get('colo-backup-repl')!;
    await job.cancelAndWait();
    assert.deepEqual(await f.registry.queryStatus(), { error: true, desc: 'I/O error occurred' });
    assert.deepEqual(f.repl.status().errors.map((e) => [e.disk, e.role, e.operation]), [['local', 'secondary', 'backup']]);
    await assert.rejects(f.repl.checkpoint(), { message: 'Backup job was cancelled unexpectedly' });
    assert.equal(f.localBB.node, f.local, 'the filter went with the job');
  } finally {
    await f.cleanup();
  }
});

test('two disks replicated together: every *All call covers both', async () => {
  const g = createGraph();
  const bbs: BlockBackend[] = [];
  for (const n of ['0', '1']) {
    const local = await g.add({ driver: 'memory', 'node-name': `local${n}`, size: MiB });
    bbs.push(new BlockBackend(`parent${n}`, local));
    await g.add({ driver: 'memory', 'node-name': `hidden${n}`, backing: `local${n}` });
    await g.add({ driver: 'memory', 'node-name': `active${n}`, backing: `hidden${n}` });
    await g.add({ driver: 'replication', 'node-name': `childs${n}`, mode: 'secondary', 'top-id': `childs${n}`, file: `active${n}` });
  }
  const r = replicationRegistry(g);
  await r.setReplication({ enable: true, primary: false });
  assert.deepEqual(r.list().map((n) => n.stage), ['running', 'running']);
  await r.doCheckpoint();
  await r.setReplication({ enable: false, primary: false, failover: true });
  await r.settled();
  assert.deepEqual(r.list().map((n) => n.stage), ['done', 'done']);
  for (const bb of bbs) bb.detach();
  await g.closeAll();
});
