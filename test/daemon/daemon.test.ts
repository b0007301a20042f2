/**
 * The daemon's API, as the QMP layer will call it: NBD server start/stop,
 * exports add/remove/list, connections, events, and a shutdown that lets
 * requests in flight finish before the images close.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Daemon, type DaemonEvent } from '../../src/daemon/daemon.js';
import { NbdClient } from '../../src/nbd/client.js';
import { gate, ScriptedNode } from '../nbd/fixtures.js';

async function withDaemon(fn: (d: Daemon, port: number, scripted: ScriptedNode) => Promise<void>): Promise<void> {
  const d = new Daemon();
  let scripted: ScriptedNode | null = null;
  d.graph.register({
    name: 'scripted',
    kind: 'format',
    async open(ctx) {
      const inner = await ctx.openChild('file');
      if (!inner) throw new Error('file missing');
      scripted = new ScriptedNode(ctx.nodeName ?? 'scripted', inner);
      return scripted;
    },
  });
  await d.addBlockdev({ driver: 'memory', 'node-name': 'm0', size: 1 << 20 });
  await d.addBlockdev({ driver: 'scripted', 'node-name': 's0', file: { driver: 'memory', size: 1 << 20 } });
  await d.addBlockdev({ driver: 'memory', 'node-name': 'ro0', size: 4096, 'read-only': true });
  const addr = await d.startNbdServer({ addr: { type: 'inet', host: '127.0.0.1', port: 0 } });
  try {
    await fn(d, addr.type === 'inet' ? Number(addr.port) : 0, scripted!);
  } finally {
    await d.shutdown();
  }
}

function connect(port: number, exportName: string): Promise<NbdClient> {
  return NbdClient.connect({ type: 'inet', host: '127.0.0.1', port }, { exportName });
}

test('server and exports: errors as QEMU words them, names default to the node name', () => withDaemon(async (d, port) => {
  await assert.rejects(d.startNbdServer({ addr: { type: 'inet', host: '127.0.0.1', port: 0 } }), /NBD server already running/);
  const info = d.addExport({ id: 'e0', node: 'm0', writable: true, description: 'memory' });
  assert.deepEqual({ ...info, stats: undefined }, {
    id: 'e0', type: 'nbd', nodeName: 'm0', name: 'm0', writable: true, description: 'memory', shuttingDown: false, stats: undefined,
  });
  assert.throws(() => d.addExport({ id: 'e0', node: 'm0', name: 'x' }), /Block export id 'e0' is already in use/);
  assert.throws(() => d.addExport({ id: 'e1', node: 'm0' }), /NBD server already has export named 'm0'/);
  assert.throws(() => d.addExport({ id: 'e1', node: 'nope' }), /Cannot find device='nope' nor node-name='nope'/);
  assert.throws(() => d.addExport({ id: 'e1', node: 'ro0', writable: true }), /Cannot export read-only node 'ro0' as writable/);
  d.addExport({ id: 'e1', node: d.graph.get('ro0') });
  assert.deepEqual(d.listExports().map((e) => e.id), ['e1', 'e0'], 'newest first, as QEMU lists them');
  assert.ok(d.hasExportName('ro0') && !d.hasExportName('e1'));
  await assert.rejects(d.removeExport('nope'), /Export 'nope' is not found/);
  await assert.rejects(d.graph.delete('m0'), /in use/, 'an exported node cannot be deleted');

  const c = await connect(port, 'm0');
  await c.write(0, Buffer.alloc(8192, 1));
  await c.read(0, Buffer.alloc(4096));
  const stats = d.findExport('e0')!.stats;
  assert.deepEqual([stats.reads, stats.writes, stats.bytesRead, stats.bytesWritten, stats.connections], [1, 1, 4096, 8192, 1]);
  assert.deepEqual(d.listConnections().map((x) => [x.export, x.phase, x.requests]), [['m0', 'transmission', 2]]);
  await c.close();
}));

test('export removal: safe refuses while connected, hard drops the client; events are sent', () => withDaemon(async (d, port) => {
  const events: DaemonEvent[] = [];
  d.onEvent((e) => events.push(e));
  d.addExport({ id: 'e0', node: 'm0', writable: true });
  const c = await connect(port, 'm0');
  await assert.rejects(d.removeExport('e0', 'safe'), /still in use/);
  assert.equal(d.listExports().length, 1);
  await d.removeExport('e0', 'hard');
  await assert.rejects(c.read(0, Buffer.alloc(512)), (e: Error & { code?: string }) => e.code === 'EIO');
  assert.deepEqual(events, [{ event: 'BLOCK_EXPORT_DELETED', data: { id: 'e0' } }]);
  assert.deepEqual(d.listExports(), []);
  await d.graph.delete('m0');
}));

test('nbd-server-stop removes every export; a second stop says the server is not running', () => withDaemon(async (d) => {
  const events: DaemonEvent[] = [];
  d.onEvent((e) => events.push(e));
  d.addExport({ id: 'a', node: 'm0' });
  d.addExport({ id: 'b', node: 'ro0' });
  await d.stopNbdServer();
  assert.deepEqual(events.map((e) => e.event === 'BLOCK_EXPORT_DELETED' && e.data.id), ['a', 'b']);
  assert.deepEqual(d.listExports(), []);
  await assert.rejects(d.stopNbdServer(), /NBD server not running/);
  assert.throws(() => d.addExport({ id: 'c', node: 'm0' }), /NBD server not running/);
}));

test('shutdown lets a request in flight finish and answers it before the images close', () => withDaemon(async (d, port, scripted) => {
  d.addExport({ id: 'e0', node: 's0', writable: true });
  const held = gate();
  let reached!: () => void;
  const atNode = new Promise<void>((r) => { reached = r; });
  scripted.hook = async (op) => {
    if (op === 'write') {
      reached();
      await held.promise;
    }
  };
  const c = await connect(port, 's0');
  const write = c.write(0, Buffer.alloc(4096, 9));
  await atNode;
  const stopping = d.shutdown('test');
  held.open();
  await write;
  await stopping;
  assert.ok(scripted.isClosed, 'the graph was closed after the request finished');
}));
