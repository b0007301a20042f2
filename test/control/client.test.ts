import assert from 'node:assert/strict';
import * as net from 'node:net';
import { test } from 'node:test';
import { QmpClient, QmpTransportError } from '../../src/control/qmp-client.js';
import { buildRegistry } from '../../src/control/commands/index.js';
import { command } from '../../src/control/registry.js';
import { QmpServer } from '../../src/control/server.js';
import { createGraph } from '../../src/drivers/index.js';
import { tempDir } from '../helpers/env.js';
import { deferred, rejectsQmp, startServer } from './helpers.js';

test('concurrent commands are matched to their replies; results are plain numbers', async () => {
  const graph = createGraph();
  const registry = buildRegistry({ graph });
  registry.add(command({ name: 'numbers', handler: () => [1.5, 9007199254740993n, 2n, -0] }));
  const dir = tempDir();
  const server = new QmpServer({ registry });
  await server.listen({ path: dir.file('s') });
  const c = await QmpClient.connect(dir.file('s'));
  try {
    assert.equal(c.greeting.version.qemu.major, 7);
    assert.match(c.greeting.version.package, /^colo-blk /);
    assert.deepEqual(c.greeting.capabilities, []);
    const results = await Promise.all([
      c.execute('query-version'),
      c.execute('blockdev-add', { driver: 'memory', 'node-name': 'm', size: 4096 }),
      c.execute('nosuch').catch((e: unknown) => e),
      c.execute('numbers'),
      c.execute('query-named-block-nodes', { flat: true }),
    ]);
    assert.deepEqual(results[0], { qemu: { micro: 0, minor: 2, major: 7 }, package: c.greeting.version.package });
    assert.deepEqual(results[1], {});
    assert.equal((results[2] as { class: string }).class, 'CommandNotFound');
    assert.deepEqual(results[3], [1.5, 9007199254740993n, 2, 0]);
    assert.equal((results[4] as Array<{ 'node-name': string }>)[0]!['node-name'], 'm');
  } finally {
    await c.close();
    await server.close();
    dir.cleanup();
  }
});

test('without negotiation, commands are refused with QEMU\'s message', async () => {
  const t = await startServer();
  const c = await QmpClient.connect(t.path, { negotiate: false });
  try {
    await rejectsQmp(c.execute('query-version'), 'CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
    await c.execute('qmp_capabilities');
    await c.execute('query-version');
  } finally {
    await c.close();
    await t.close();
  }
});

test('waitForEvent returns buffered events first, then future ones; onEvent sees everything', async () => {
  const t = await startServer();
  const c = await QmpClient.connect(t.path);
  try {
    const all: string[] = [];
    c.onEvent((e) => all.push(`${e.event}:${(e.data as { id: string }).id}`));
    t.events.emit('BLOCK_EXPORT_DELETED', { id: 'early' });
    await c.execute('query-version'); // the event was sent before this reply
    const early = await c.waitForEvent('BLOCK_EXPORT_DELETED');
    assert.deepEqual(early.data, { id: 'early' });
    const later = c.waitForEvent('BLOCK_EXPORT_DELETED', { match: (d) => (d as { id: string }).id === 'b' });
    t.events.emit('BLOCK_EXPORT_DELETED', { id: 'a' });
    t.events.emit('BLOCK_EXPORT_DELETED', { id: 'b' });
    assert.deepEqual((await later).data, { id: 'b' });
    assert.deepEqual(c.takeEvents().map((e) => (e.data as { id: string }).id), ['a']);
    assert.deepEqual(all, ['BLOCK_EXPORT_DELETED:early', 'BLOCK_EXPORT_DELETED:a', 'BLOCK_EXPORT_DELETED:b']);
    await assert.rejects(c.waitForEvent('NEVER', { timeoutMs: 20 }), (e: unknown) => e instanceof QmpTransportError && e.code === 'timeout');
  } finally {
    await c.close();
    await t.close();
  }
});

test('a timed-out command is abandoned: its late reply is dropped and later commands work', async () => {
  const gate = deferred();
  const graph = createGraph();
  const registry = buildRegistry({ graph });
  registry.add(command({ name: 'stall', async handler() { await gate.promise; return 'late'; } }));
  const dir = tempDir();
  const server = new QmpServer({ registry });
  await server.listen({ path: dir.file('s') });
  const c = await QmpClient.connect(dir.file('s'));
  try {
    await assert.rejects(c.execute('stall', undefined, { timeoutMs: 30 }), (e: unknown) => e instanceof QmpTransportError && e.code === 'timeout');
    const next = c.execute('query-version');
    gate.resolve();
    assert.equal(((await next) as { qemu: { major: number } }).qemu.major, 7);
  } finally {
    await c.close();
    await server.close();
    dir.cleanup();
  }
});

test('when the server goes away, waiting commands fail with a transport error', async () => {
  const gate = deferred();
  const quit = deferred();
  const graph = createGraph();
  let server: QmpServer | undefined;
  const registry = buildRegistry({ graph, onQuit: () => { void server!.close().then(() => quit.resolve()); } });
  registry.add(command({ name: 'stall', async handler() { await gate.promise; } }));
  const dir = tempDir();
  server = new QmpServer({ registry });
  await server.listen({ path: dir.file('s') });
  const a = await QmpClient.connect(dir.file('s'));
  const b = await QmpClient.connect(dir.file('s'));
  try {
    await b.execute('quit');
    await quit.promise;
    await a.waitClosed();
    await assert.rejects(a.execute('query-version'), (e: unknown) => e instanceof QmpTransportError && e.code === 'closed');
    gate.resolve();
  } finally {
    await a.close();
    await b.close();
    dir.cleanup();
  }
});

test('connect waits for a socket that appears later, and refuses peers that do not speak QMP', async () => {
  const dir = tempDir();
  const path = dir.file('late.sock');
  try {
    const pending = QmpClient.connect(path, { waitMs: 10_000 });
    const server = new QmpServer({ registry: buildRegistry({ graph: createGraph() }) });
    await server.listen({ path });
    const c = await pending;
    await c.execute('query-version');
    await c.close();
    await server.close();

    await assert.rejects(QmpClient.connect(dir.file('nosuch')), (e: unknown) => e instanceof QmpTransportError && e.code === 'connect');

    const liar = net.createServer((s) => s.end('SSH-2.0-OpenSSH_9.2\r\n'));
    await new Promise<void>((r) => liar.listen(dir.file('liar'), () => r()));
    await assert.rejects(QmpClient.connect(dir.file('liar')), (e: unknown) => e instanceof QmpTransportError && e.code === 'protocol');
    const banner = net.createServer((s) => s.write('{"hello": 1}\r\n'));
    await new Promise<void>((r) => banner.listen(dir.file('banner'), () => r()));
    await assert.rejects(QmpClient.connect(dir.file('banner')), /did not greet with a QMP banner/);
    await new Promise<void>((r) => liar.close(() => r()));
    banner.close();
  } finally {
    dir.cleanup();
  }
});
