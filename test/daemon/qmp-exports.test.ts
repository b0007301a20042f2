/**
 * The daemon behind the real QMP export commands: nbd-server-start/stop,
 * block-export-add/del, nbd-server-add/remove and query-block-exports go
 * through DaemonExportControl to a live NBD server that real clients use.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildRegistry } from '../../src/control/commands/index.js';
import { EventHub } from '../../src/control/events.js';
import { QmpClient } from '../../src/control/qmp-client.js';
import { QmpServer } from '../../src/control/server.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { DaemonExportControl } from '../../src/daemon/export-control.js';
import { NbdClient } from '../../src/nbd/client.js';
import { tempDir } from '../helpers/env.js';

test('QMP export commands drive the daemon\'s NBD server', async () => {
  const dir = tempDir();
  const daemon = new Daemon();
  const events = new EventHub();
  const control = new DaemonExportControl(daemon, events);
  const qmp = new QmpServer({ registry: buildRegistry({ graph: daemon.graph, exports: control }), events });
  await qmp.listen({ path: dir.file('qmp.sock') });
  const q = await QmpClient.connect({ path: dir.file('qmp.sock') });
  const nbdSock = dir.file('nbd.sock');
  try {
    await q.execute('blockdev-add', { driver: 'memory', 'node-name': 'parent0', size: 1 << 20 });
    await q.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSock } } });
    await assert.rejects(q.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSock } } }), /NBD server already running/);
    await q.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'parent0', writable: true, 'allocation-depth': true });
    assert.deepEqual(await q.execute('query-block-exports'), [{ type: 'nbd', id: 'e0', 'node-name': 'parent0', 'shutting-down': false }]);

    const c = await NbdClient.connect({ type: 'unix', path: nbdSock }, {
      exportName: 'parent0', metaContexts: ['base:allocation', 'qemu:allocation-depth'],
    });
    assert.equal(c.info.contexts.size, 2, 'allocation-depth was passed through');
    await c.write(0, Buffer.alloc(4096, 7));
    await assert.rejects(q.execute('block-export-del', { id: 'e0' }), /export 'e0' still in use/);
    await q.execute('block-export-del', { id: 'e0', mode: 'hard' });
    assert.deepEqual((await q.waitForEvent('BLOCK_EXPORT_DELETED')).data, { id: 'e0' });
    await assert.rejects(c.read(0, Buffer.alloc(512)), (e: Error & { code?: string }) => e.code === 'EIO');

    // The COLO secondary's way: nbd-server-add, then nbd-server-stop removes it.
    await q.execute('nbd-server-add', { device: 'parent0', writable: true });
    const c2 = await NbdClient.connect({ type: 'unix', path: nbdSock }, { exportName: 'parent0' });
    const back = Buffer.alloc(4096);
    await c2.read(0, back);
    assert.ok(back.every((b) => b === 7), 'the data written before is still there');
    await c2.close();
    await q.execute('nbd-server-stop');
    assert.deepEqual((await q.waitForEvent('BLOCK_EXPORT_DELETED')).data, { id: 'parent0' });
    assert.deepEqual(await q.execute('query-block-exports'), []);
    await assert.rejects(q.execute('nbd-server-stop'), /NBD server not running/);
  } finally {
    await q.close();
    await qmp.close();
    control.dispose();
    events.close();
    await daemon.shutdown();
    dir.cleanup();
  }
});
