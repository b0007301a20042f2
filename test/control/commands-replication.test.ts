import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError } from '../../src/block/errors.js';
import { replicationErrorEvent, type ReplicationControl, type ReplicationMode, type ReplicationNodeStatus } from '../../src/control/replication-control.js';
import { setLogSink } from '../../src/util/log.js';
import { client, rejectsQmp, startServer } from './helpers.js';

/** Records calls; fails the next one with `failNext` when set. */
class FakeReplication implements ReplicationControl {
  calls: string[] = [];
  failNext: BlockError | null = null;
  error: string | null = 'Block replication is not running';
  status: ReplicationNodeStatus[] = [];

  private maybeFail(): void {
    const e = this.failNext;
    this.failNext = null;
    if (e) throw e;
  }

  async start(mode: ReplicationMode): Promise<void> { this.calls.push(`start:${mode}`); this.maybeFail(); this.error = null; }
  async stop(failover: boolean): Promise<void> { this.calls.push(`stop:${failover}`); this.maybeFail(); }
  async checkpoint(): Promise<void> { this.calls.push('checkpoint'); this.maybeFail(); }
  async checkError(): Promise<void> { if (this.error) throw new BlockError('EIO', this.error); }
  query(): ReplicationNodeStatus[] { return this.status; }
}

async function setup() {
  const replication = new FakeReplication();
  const t = await startServer({ replication });
  const c = await client(t.path);
  return { t, c, replication, async close() { await c.close(); await t.close(); } };
}

test('xen-set-replication: QEMU argument rules, mode mapping and error handling', async () => {
  const { c, replication, close } = await setup();
  try {
    const set = (args: Record<string, unknown>) => c.execute('xen-set-replication', args);
    await rejectsQmp(set({}), 'GenericError', "Parameter 'enable' is missing");
    await rejectsQmp(set({ enable: true }), 'GenericError', "Parameter 'primary' is missing");
    await rejectsQmp(set({ enable: 'yes', primary: true }), 'GenericError', "Invalid parameter type for 'enable', expected: boolean");
    await rejectsQmp(set({ enable: true, primary: true, failover: false }), 'GenericError', "Parameter 'failover' is only for stopping replication");
    await rejectsQmp(set({ enable: true, primary: true, failover: true }), 'GenericError', "Parameter 'failover' is only for stopping replication");
    assert.deepEqual(replication.calls, []);

    await set({ enable: true, primary: false });
    await set({ enable: true, primary: true });
    replication.failNext = new BlockError('EINVAL', 'Block replication is running or done');
    await rejectsQmp(set({ enable: true, primary: true }), 'GenericError', 'Block replication is running or done');
    replication.failNext = new BlockError('ECANCELED', 'Backup job was cancelled unexpectedly');
    await rejectsQmp(set({ enable: false, primary: false }), 'GenericError', 'Backup job was cancelled unexpectedly');
    replication.failNext = new BlockError('EINVAL', 'Block replication is not running');
    await rejectsQmp(set({ enable: false, primary: false, failover: false }), 'GenericError', 'Block replication is not running');

    // A failover stop reports success whatever happens, as QEMU does; the error goes to the log.
    const logged: string[] = [];
    setLogSink({ write: (l) => logged.push(l) });
    try {
      replication.failNext = new BlockError('EINVAL', 'Block replication is not running');
      assert.deepEqual(await set({ enable: false, primary: true, failover: true }), {});
    } finally {
      setLogSink({ write: (l) => process.stderr.write(l) });
    }
    assert.ok(logged.some((l) => l.includes('replication.failover_error_ignored') && l.includes('Block replication is not running')));
    assert.deepEqual(replication.calls, ['start:secondary', 'start:primary', 'start:primary', 'stop:false', 'stop:false', 'stop:true']);
  } finally {
    await close();
  }
});

test('query-xen-replication-status and xen-colo-do-checkpoint', async () => {
  const { c, replication, close } = await setup();
  try {
    assert.deepEqual(await c.execute('query-xen-replication-status'), { error: true, desc: 'Block replication is not running' });
    replication.error = null;
    assert.deepEqual(await c.execute('query-xen-replication-status'), { error: false });
    replication.error = 'I/O error occurred';
    assert.deepEqual(await c.execute('query-xen-replication-status'), { error: true, desc: 'I/O error occurred' });
    await rejectsQmp(c.execute('query-xen-replication-status', { x: 1 }), 'GenericError', "Parameter 'x' is unexpected");

    await c.execute('xen-colo-do-checkpoint');
    replication.failNext = new BlockError('ECANCELED', 'Backup job was cancelled unexpectedly');
    await rejectsQmp(c.execute('xen-colo-do-checkpoint'), 'GenericError', 'Backup job was cancelled unexpectedly');
    assert.deepEqual(replication.calls, ['checkpoint', 'checkpoint']);
  } finally {
    await close();
  }
});

test('x-colo-blk-query-replication reports stage, per-disk errors, buffered bytes and commit progress', async () => {
  const { c, replication, t, close } = await setup();
  try {
    replication.status = [
      {
        nodeName: 'childs0', mode: 'secondary', stage: 'failover', topId: 'colo-disk0',
        errors: [{ disk: 'hidden0', role: 'hidden', operation: 'copy-before-write', errno: 'ENOSPC', desc: 'No space left on device' }],
        activeBytes: 65536, hiddenBytes: 131072, checkpoints: 12, lastCheckpointUs: 2900,
        commit: { status: 'running', offset: 1 << 20, len: 4 << 20 },
      },
      { nodeName: 'replication0', mode: 'primary', stage: 'running', errors: [], checkpoints: 12 },
    ];
    const info = await c.execute<Array<Record<string, unknown>>>('x-colo-blk-query-replication');
    assert.deepEqual(info[0], {
      'node-name': 'childs0', mode: 'secondary', stage: 'failover', 'top-id': 'colo-disk0',
      errors: [{ disk: 'hidden0', role: 'hidden', operation: 'copy-before-write', errno: 28, 'errno-name': 'ENOSPC', desc: 'No space left on device' }],
      'active-bytes': 65536, 'hidden-bytes': 131072, checkpoints: 12, 'last-checkpoint-us': 2900,
      commit: { status: 'running', offset: 1048576, len: 4194304 },
    });
    assert.deepEqual(info[1], { 'node-name': 'replication0', mode: 'primary', stage: 'running', errors: [], checkpoints: 12 });

    t.events.emit('COLO_BLK_REPLICATION_ERROR', replicationErrorEvent('replication0', 'primary', {
      disk: 'nbd0', role: 'nbd', operation: 'write', errno: 'ECONNRESET', desc: 'Connection reset by peer',
    }, false));
    assert.deepEqual((await c.waitForEvent('COLO_BLK_REPLICATION_ERROR')).data, {
      'node-name': 'replication0', mode: 'primary', disk: 'nbd0', role: 'nbd', operation: 'write',
      errno: 104, 'errno-name': 'ECONNRESET', desc: 'Connection reset by peer', 'guest-visible': false,
    });
    t.events.emit('COLO_BLK_REPLICATION_STAGE', { 'node-name': 'childs0', mode: 'secondary', stage: 'done', previous: 'failover' });
    const ev = await c.waitForEvent('COLO_BLK_REPLICATION_STAGE');
    assert.deepEqual(ev.data, { 'node-name': 'childs0', mode: 'secondary', stage: 'done', previous: 'failover' });
    assert.ok(ev.timestamp.seconds > 1_600_000_000 && ev.timestamp.microseconds >= 0 && ev.timestamp.microseconds < 1e6);
  } finally {
    await close();
  }
});

test('without a replication engine the commands do not exist, as in a QEMU built without replication', async () => {
  const t = await startServer();
  const c = await client(t.path);
  try {
    await rejectsQmp(c.execute('xen-set-replication', { enable: true, primary: true }), 'CommandNotFound', 'The command xen-set-replication has not been found');
    const names = (await c.execute<Array<{ name: string }>>('query-commands')).map((x) => x.name);
    assert.ok(!names.includes('xen-colo-do-checkpoint'));
    assert.ok(names.includes('blockdev-add') && names.includes('qmp_capabilities'));
  } finally {
    await c.close();
    await t.close();
  }
});
