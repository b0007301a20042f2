import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError } from '../../src/block/errors.js';
import type { QmpEventSink } from '../../src/control/events.js';
import type { BlockExportInfo, ExportControl, NbdExportConfig, NbdServerConfig } from '../../src/control/export-control.js';
import { EventHub } from '../../src/control/events.js';
import { client, rejectsQmp, startServer } from './helpers.js';

/** An export engine that remembers what it was told. */
class FakeExports implements ExportControl {
  server: NbdServerConfig | null = null;
  readonly exports: Array<{ config: NbdExportConfig; shuttingDown: boolean }> = [];
  /** Ids of exports that have NBD clients connected. */
  readonly busy = new Set<string>();

  constructor(private readonly events: QmpEventSink) {}

  get serverRunning(): boolean {
    return this.server !== null;
  }

  async startServer(config: NbdServerConfig): Promise<void> {
    this.server = config;
  }

  async stopServer(): Promise<void> {
    for (const e of [...this.exports].reverse()) this.events.emit('BLOCK_EXPORT_DELETED', { id: e.config.id });
    this.exports.length = 0;
    this.server = null;
  }

  findExport(id: string): BlockExportInfo | undefined {
    const e = this.exports.find((x) => x.config.id === id);
    return e && { id, type: 'nbd', nodeName: e.config.node.nodeName, shuttingDown: e.shuttingDown };
  }

  hasExportName(name: string): boolean {
    return this.exports.some((x) => x.config.name === name);
  }

  async addExport(config: NbdExportConfig): Promise<void> {
    this.exports.push({ config, shuttingDown: false });
  }

  async removeExport(id: string, mode: 'safe' | 'hard'): Promise<void> {
    if (mode === 'safe' && this.busy.has(id)) throw new BlockError('EBUSY', `export '${id}' still in use`);
    this.exports.splice(this.exports.findIndex((x) => x.config.id === id), 1);
    this.events.emit('BLOCK_EXPORT_DELETED', { id });
  }

  listExports(): BlockExportInfo[] {
    return [...this.exports].reverse().map((e) => this.findExport(e.config.id)!);
  }
}

async function setup() {
  const events = new EventHub();
  const exports = new FakeExports(events);
  const t = await startServer({ exports }, { events });
  const c = await client(t.path);
  await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'd0', size: 1 << 20 });
  await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'ro0', size: 1 << 20, 'read-only': true });
  return { t, c, exports, async close() { await c.close(); await t.close(); } };
}

test('nbd-server-start: QEMU argument checks, both address forms, and what reaches the engine', async () => {
  const { c, exports, close } = await setup();
  try {
    const start = (args: Record<string, unknown>) => c.execute('nbd-server-start', args);
    await rejectsQmp(start({}), 'GenericError', "Parameter 'addr' is missing");
    await rejectsQmp(start({ addr: {} }), 'GenericError', "Parameter 'addr.type' is missing");
    await rejectsQmp(start({ addr: { type: 'bogus' } }), 'GenericError', "Parameter 'type' does not accept value 'bogus'");
    await rejectsQmp(start({ addr: { type: 'inet' } }), 'GenericError', "Parameter 'addr.data' is missing");
    await rejectsQmp(start({ addr: { type: 'inet', data: { host: '127.0.0.1', port: 10809 } } }), 'GenericError', "Invalid parameter type for 'addr.data.port', expected: string");
    await rejectsQmp(start({ addr: { type: 'inet', host: '127.0.0.1' } }), 'GenericError', "Parameter 'addr.port' is missing");
    await rejectsQmp(start({ addr: { type: 'unix', data: { path: '/x' } }, 'max-connections': -1 }), 'GenericError', "Parameter 'max-connections' expects uint32_t");
    await rejectsQmp(start({ addr: { type: 'fd', data: { str: 'myfd' } } }), 'GenericError', "File descriptor named 'myfd' has not been found");
    await rejectsQmp(start({ addr: { type: 'unix', data: { path: '/x' } }, 'tls-creds': 'tls0' }), 'GenericError', "No TLS credentials with id 'tls0'");
    await rejectsQmp(start({ addr: { type: 'vsock', data: { cid: '3', port: '1' } } }), 'GenericError', 'colo-blk does not support vsock socket addresses');
    assert.equal(exports.server, null);

    await start({ addr: { type: 'inet', data: { host: '127.0.0.1', port: '10809', 'keep-alive': true } } });
    assert.deepEqual(exports.server, { addr: { type: 'inet', host: '127.0.0.1', port: '10809', keepAlive: true }, maxConnections: 0 });
    await rejectsQmp(start({ addr: { type: 'unix', data: { path: '/y' } } }), 'GenericError', 'NBD server already running');
    await c.execute('nbd-server-stop');
    await rejectsQmp(c.execute('nbd-server-stop'), 'GenericError', 'NBD server not running');

    // The flat form of qemu-storage-daemon's --nbd-server.
    await start({ addr: { type: 'unix', path: '/run/nbd.sock' }, 'max-connections': 4, 'tls-authz': 'authz0' });
    assert.deepEqual(exports.server, { addr: { type: 'unix', path: '/run/nbd.sock' }, maxConnections: 4, tlsAuthz: 'authz0' });
  } finally {
    await close();
  }
});

test('nbd-server-add / nbd-server-remove in QEMU order with QEMU messages', async () => {
  const { c, exports, close } = await setup();
  try {
    const add = (args: Record<string, unknown>) => c.execute('nbd-server-add', args);
    await rejectsQmp(add({}), 'GenericError', "Parameter 'device' is missing");
    await rejectsQmp(add({ device: 'nosuch' }), 'GenericError', "Cannot find device='nosuch' nor node-name='nosuch'");
    await rejectsQmp(add({ device: 'd0' }), 'GenericError', 'NBD server not running');
    await c.execute('nbd-server-start', { addr: { type: 'unix', data: { path: '/x' } } });

    await add({ device: 'd0', writable: true });
    const first = exports.exports[0]!.config;
    assert.equal(first.id, 'd0');
    assert.equal(first.name, 'd0');
    assert.equal(first.node.nodeName, 'd0');
    assert.equal(first.writable, true);
    await rejectsQmp(add({ device: 'd0' }), 'GenericError', "Block export id 'd0' is already in use");
    await rejectsQmp(add({ device: 'd0', name: 'x y' }), 'GenericError', 'Invalid block export id');
    await rejectsQmp(add({ device: 'd0', name: '' }), 'GenericError', 'Invalid block export id');
    await rejectsQmp(add({ device: 'd0', name: `n${'x'.repeat(4096)}` }), 'GenericError', `export name 'n${'x'.repeat(4096)}' too long`);
    await rejectsQmp(add({ device: 'd0', name: 'n2', description: 'd'.repeat(4097) }), 'GenericError', `description '${'d'.repeat(4097)}' too long`);
    await rejectsQmp(add({ device: 'd0', name: 'n2', bitmap: 'b0' }), 'GenericError', "Bitmap 'b0' is not found");

    // A read-only node is exported read-only, without complaint.
    await add({ device: 'ro0', writable: true, name: 'ro-export', description: 'hello' });
    const ro = exports.exports[1]!.config;
    assert.equal(ro.writable, false);
    assert.equal(ro.description, 'hello');

    const remove = (args: Record<string, unknown>) => c.execute('nbd-server-remove', args);
    await rejectsQmp(remove({}), 'GenericError', "Parameter 'name' is missing");
    await rejectsQmp(remove({ name: 'nosuch' }), 'GenericError', "Export 'nosuch' is not found");
    await rejectsQmp(remove({ name: 'd0', mode: 'bogus' }), 'GenericError', "Parameter 'mode' does not accept value 'bogus'");
    exports.busy.add('d0');
    await rejectsQmp(remove({ name: 'd0' }), 'GenericError', "export 'd0' still in use");
    exports.exports[0]!.shuttingDown = true;
    await rejectsQmp(remove({ name: 'd0', mode: 'hard' }), 'GenericError', "Export 'd0' is already shutting down");
    exports.exports[0]!.shuttingDown = false;
    await remove({ name: 'd0', mode: 'hard' });
    const ev = await c.waitForEvent('BLOCK_EXPORT_DELETED');
    assert.deepEqual(ev.data, { id: 'd0' });
    assert.deepEqual(await c.execute('query-block-exports'), [{ 'node-name': 'ro0', 'shutting-down': false, type: 'nbd', id: 'ro-export' }]);
  } finally {
    await close();
  }
});

test('block-export-add / block-export-del / query-block-exports', async () => {
  const { c, exports, close } = await setup();
  try {
    const add = (args: Record<string, unknown>) => c.execute('block-export-add', args);
    await rejectsQmp(add({}), 'GenericError', "Parameter 'type' is missing");
    await rejectsQmp(add({ type: 'nbd' }), 'GenericError', "Parameter 'id' is missing");
    await rejectsQmp(add({ type: 'nbd', id: 'e1' }), 'GenericError', "Parameter 'node-name' is missing");
    await rejectsQmp(add({ type: 'fuse', id: 'e1', 'node-name': 'd0' }), 'GenericError', "Parameter 'type' does not accept value 'fuse'");
    await rejectsQmp(add({ type: 'nbd', id: 'e1', 'node-name': 'nosuch' }), 'GenericError', "Cannot find device='' nor node-name='nosuch'");
    await rejectsQmp(add({ type: 'nbd', id: 'e1', 'node-name': 'd0' }), 'GenericError', 'NBD server not running');
    await c.execute('nbd-server-start', { addr: { type: 'unix', data: { path: '/x' } } });
    await rejectsQmp(add({ type: 'nbd', id: 'e1', 'node-name': 'ro0', writable: true }), 'GenericError', 'Cannot export read-only node as writable');
    await rejectsQmp(add({ type: 'nbd', id: 'e1', 'node-name': 'd0', iothread: 'io0' }), 'GenericError', 'iothread "io0" not found');
    await rejectsQmp(add({ type: 'nbd', id: 'e1', 'node-name': 'd0', bitmaps: ['b1'] }), 'GenericError', "Bitmap 'b1' is not found");
    await rejectsQmp(add({ type: 'nbd', id: 'e1', 'node-name': 'd0', bitmaps: [{ node: 'd0', name: 'b1' }] }), 'GenericError', "Dirty bitmap 'b1' not found");
    await rejectsQmp(add({ type: 'nbd', id: 'e1', 'node-name': 'd0', bitmaps: [{ node: 'zz', name: 'b1' }] }), 'GenericError', "Node 'zz' not found");
    await rejectsQmp(add({ type: 'nbd', id: 'e1', 'node-name': 'd0', bitmaps: [5] }), 'GenericError', "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr");
    assert.equal(exports.exports.length, 0);

    await add({ type: 'nbd', id: 'e1', 'node-name': 'd0', name: 'disk', writable: true, writethrough: true, description: 'desc', 'allocation-depth': true });
    const cfg = exports.exports[0]!.config;
    assert.deepEqual({ ...cfg, node: cfg.node.nodeName }, {
      id: 'e1', node: 'd0', name: 'disk', writable: true, writethrough: true, allocationDepth: true, description: 'desc',
    });
    await rejectsQmp(add({ type: 'nbd', id: 'e1', 'node-name': 'd0' }), 'GenericError', "Block export id 'e1' is already in use");
    await rejectsQmp(add({ type: 'nbd', id: 'e2', 'node-name': 'd0', name: 'disk' }), 'GenericError', "NBD server already has export named 'disk'");
    await add({ type: 'nbd', id: 'e2', 'node-name': 'd0' });
    assert.equal(exports.exports[1]!.config.name, 'd0', 'the name defaults to the node name');
    assert.equal(exports.exports[1]!.config.writable, false);

    assert.deepEqual(await c.execute('query-block-exports'), [
      { 'node-name': 'd0', 'shutting-down': false, type: 'nbd', id: 'e2' },
      { 'node-name': 'd0', 'shutting-down': false, type: 'nbd', id: 'e1' },
    ]);
    await rejectsQmp(c.execute('block-export-del', {}), 'GenericError', "Parameter 'id' is missing");
    await rejectsQmp(c.execute('block-export-del', { id: 'nosuch' }), 'GenericError', "Export 'nosuch' is not found");
    await c.execute('block-export-del', { id: 'e1', mode: 'safe' });
    assert.deepEqual((await c.waitForEvent('BLOCK_EXPORT_DELETED')).data, { id: 'e1' });
    await c.execute('nbd-server-stop');
    assert.deepEqual((await c.waitForEvent('BLOCK_EXPORT_DELETED')).data, { id: 'e2' });
    assert.deepEqual(await c.execute('query-block-exports'), []);
  } finally {
    await close();
  }
});
