/**
 * The replication engine behind the real QMP server: a COLO secondary and a
 * primary built with blockdev-add, driven with QEMU's commands, observed
 * through QEMU's and colo-blk's events.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockBackend } from '../../src/block/backend.js';
import { createGraph } from '../../src/drivers/index.js';
import { forwardEvents, jobControl, replicationControl } from '../../src/replication/qmp.js';
import { client, rejectsQmp, startServer } from '../control/helpers.js';
import { MiB, expectPattern, fill } from './fixtures.js';

async function serve() {
  const graph = createGraph();
  const t = await startServer({ graph, replication: replicationControl(graph), jobs: jobControl(graph) });
  const unforward = forwardEvents(graph, t.events);
  const c = await client(t.path);
  return {
    graph, t, c,
    async close() {
      unforward();
      await c.close();
      await t.close();
    },
  };
}

test('a COLO secondary over QMP: start, status, checkpoint, failover, events', async () => {
  const { graph, c, close } = await serve();
  let nbd: BlockBackend | null = null;
  try {
    await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'parent0', size: 4 * MiB });
    // Stands in for nbd-server-add parent0 (the NBD server is another engineer's).
    nbd = new BlockBackend('parent0', graph.get('parent0'));
    await nbd.write(0, fill(4 * MiB, 0x11));
    await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'hidden0', backing: 'parent0' });
    await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'active0', backing: 'hidden0' });
    await c.execute('blockdev-add', { driver: 'replication', 'node-name': 'childs0', mode: 'secondary', 'top-id': 'colo-disk0', file: 'active0' });
    await c.execute('blockdev-add', { driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['childs0'] });

    assert.deepEqual(await c.execute('query-xen-replication-status'), { error: true, desc: 'Block replication is not running' });
    await rejectsQmp(c.execute('xen-set-replication', { enable: true, primary: true }), 'GenericError',
      "The parameter mode's value is invalid, needs 1, but got 0");
    await c.execute('xen-set-replication', { enable: true, primary: false });
    const started = await c.waitForEvent('COLO_BLK_REPLICATION_STAGE');
    assert.deepEqual(started.data, { 'node-name': 'childs0', mode: 'secondary', stage: 'running', previous: 'none' });
    assert.deepEqual(await c.execute('query-xen-replication-status'), { error: false });
    assert.deepEqual(await c.execute('query-block-jobs'), [], 'the backup job is internal');

    await nbd.write(MiB, fill(MiB, 0x22));
    const top = graph.get('colo-disk0');
    await top.write(0, fill(65536, 0x33));
    const [info] = await c.execute<Array<Record<string, unknown>>>('x-colo-blk-query-replication');
    assert.equal(info!['node-name'], 'childs0');
    assert.equal(info!.stage, 'running');
    assert.equal(info!['top-id'], 'colo-disk0');
    assert.deepEqual(info!.errors, []);
    assert.equal(info!['active-bytes'], 65536);
    assert.equal(info!['hidden-bytes'], MiB);
    assert.equal(info!.checkpoints, 1);

    await c.execute('xen-colo-do-checkpoint');
    await expectPattern(top, MiB, MiB, 0x22, 'after the checkpoint the view is the primary');
    await expectPattern(top, 0, 65536, 0x11, "the SVM's write was discarded");

    await top.write(2 * MiB, fill(MiB, 0x44));
    await c.execute('xen-set-replication', { enable: false, primary: false, failover: true });
    const done = await c.waitForEvent('COLO_BLK_REPLICATION_STAGE', { match: (d) => (d as { stage: string }).stage === 'done' });
    assert.equal((done.data as { previous: string }).previous, 'failover');
    const progress = await c.waitForEvent('COLO_BLK_JOB_PROGRESS');
    assert.equal((progress.data as { type: string }).type, 'commit');
    await expectPattern(nbd, 2 * MiB, MiB, 0x44, 'the failover committed the view');
    const [after] = await c.execute<Array<Record<string, unknown>>>('x-colo-blk-query-replication');
    assert.equal(after!.stage, 'done');
    assert.deepEqual(after!.commit, { status: 'completed', offset: MiB, len: MiB });
    assert.deepEqual(await c.execute('query-xen-replication-status'), { error: false });
    // A promoted secondary ignores a primary start (continuous replication).
    await c.execute('xen-set-replication', { enable: true, primary: true });
  } finally {
    nbd?.detach();
    await close();
  }
});

test('a COLO primary over QMP: x-blockdev-change, latched errors as events, quorum events', async () => {
  const { graph, c, close } = await serve();
  try {
    await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'primary-disk0', size: MiB });
    await c.execute('blockdev-add', { driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['primary-disk0'] });
    await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'link-mem', size: MiB });
    // The NBD client's place: a fault filter lets the test cut the link.
    await c.execute('blockdev-add', { driver: 'fault', 'node-name': 'nbd0', file: 'link-mem' });
    await c.execute('blockdev-add', { driver: 'replication', 'node-name': 'replication0', mode: 'primary', file: 'nbd0' });
    await c.execute('x-blockdev-change', { parent: 'colo-disk0', node: 'replication0' });
    await rejectsQmp(c.execute('x-blockdev-change', { parent: 'colo-disk0', node: 'replication0' }), 'GenericError',
      'The node replication0 already has a parent');
    await rejectsQmp(c.execute('blockdev-del', { 'node-name': 'replication0' }), 'GenericError', 'Block device replication0 is in use');
    await c.execute('xen-set-replication', { enable: true, primary: true });

    const dev = graph.get('colo-disk0');
    await dev.write(0, fill(4096, 0x55));
    await dev.flush(); // the forwarding window: a flush waits for the secondary's answer
    await expectPattern(graph.get('link-mem'), 0, 4096, 0x55, 'forwarded to the secondary');

    (graph.get('nbd0') as import('../../src/drivers/fault.js').FaultNode).addRule({ op: 'write', errno: 'ECONNRESET' });
    await dev.write(4096, fill(4096, 0x56));
    const ev = await c.waitForEvent('COLO_BLK_REPLICATION_ERROR');
    assert.deepEqual(ev.data, {
      'node-name': 'replication0', mode: 'primary', disk: 'nbd0', role: 'nbd', operation: 'write',
      errno: 104, 'errno-name': 'ECONNRESET', desc: 'fault injected by nbd0: write [4096, 8192)', 'guest-visible': false,
    });
    assert.deepEqual(await c.execute('query-xen-replication-status'), { error: true, desc: 'I/O error occurred' });

    // Primary failover: stop, remove the child, delete the node.
    await c.execute('xen-set-replication', { enable: false, primary: true, failover: true });
    await dev.write(0, fill(4096, 0x57));
    const bad = await c.waitForEvent('QUORUM_REPORT_BAD');
    assert.deepEqual(bad.data, { type: 'write', error: 'Input/output error', 'node-name': 'replication0', 'sector-num': 0, 'sectors-count': 8 });
    await rejectsQmp(c.execute('x-blockdev-change', { parent: 'colo-disk0', child: 'children.7' }), 'GenericError',
      "Node 'colo-disk0' does not have child 'children.7'");
    await c.execute('x-blockdev-change', { parent: 'colo-disk0', child: 'children.1' });
    await rejectsQmp(c.execute('x-blockdev-change', { parent: 'colo-disk0', child: 'children.0' }), 'GenericError',
      'The number of children cannot be lower than the vote threshold 1');
    await c.execute('blockdev-del', { 'node-name': 'replication0' });
    assert.deepEqual(await c.execute('query-xen-replication-status'), { error: false }, 'no replication node left');
  } finally {
    await close();
  }
});
