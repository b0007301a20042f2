import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildRegistry } from '../../src/control/commands/index.js';
import { QmpServer } from '../../src/control/server.js';
import { parseCommandArgs } from '../../src/cli/qmp.js';
import { parseQmpAddress } from '../../src/control/address.js';
import { createGraph } from '../../src/drivers/index.js';
import { CLI, run } from '../helpers/env.js';
import { startServer } from './helpers.js';

const qmp = (...args: string[]) => run(process.execPath, [CLI, 'qmp', ...args]);

test('colo-blk qmp prints results, reports error replies with exit 1 and usage or connection problems with exit 2', async () => {
  const t = await startServer();
  try {
    // Independent invocations run side by side: each is a node process start.
    const [v, err, unknown, usage, badJson, missing] = await Promise.all([
      qmp(t.path, 'query-version'),
      qmp(t.path, 'blockdev-del', 'node-name=nosuch'),
      qmp(t.path, 'nosuch'),
      qmp(t.path),
      qmp(t.path, 'query-version', '{"a":'),
      qmp(`${t.path}.nosuch`, 'query-version'),
    ]);
    assert.equal(v.status, 0, v.stderr);
    assert.deepEqual(JSON.parse(v.stdout), { qemu: { micro: 0, minor: 2, major: 7 }, package: JSON.parse(v.stdout).package });
    assert.match(JSON.parse(v.stdout).package, /^colo-blk /);
    assert.ok(v.stdout.includes('\n  "qemu"'), 'pretty-printed by default');

    const add = await qmp(t.path, 'blockdev-add', 'driver=memory', 'node-name=m0', 'size=65536', 'cache.direct=false');
    assert.equal(add.status, 0, add.stderr);
    assert.equal(add.stdout, '{}\n');
    assert.equal(t.deps.graph.lookup('m0')?.size, 65536);

    const json = await qmp('-c', t.path, 'query-named-block-nodes', '{"flat": true}');
    assert.equal(json.status, 0);
    assert.equal(json.stdout.split('\n').length, 2, 'one line with --compact');
    assert.equal(JSON.parse(json.stdout)[0]['node-name'], 'm0');

    assert.equal(err.status, 1);
    assert.equal(err.stderr, "GenericError: Failed to find node with node-name='nosuch'\n");
    assert.equal(err.stdout, '');
    assert.equal(unknown.status, 1);
    assert.equal(unknown.stderr, 'CommandNotFound: The command nosuch has not been found\n');

    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /SOCKET and COMMAND are required/);
    assert.equal(badJson.status, 2);
    assert.match(badJson.stderr, /invalid JSON arguments/);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /cannot connect to QMP socket/);
  } finally {
    await t.close();
  }
});

test('colo-blk qmp talks TCP too', async () => {
  const server = new QmpServer({ registry: buildRegistry({ graph: createGraph() }) });
  const addr = await server.listen({ host: '127.0.0.1', port: 0 }) as { port: number };
  try {
    const r = await qmp(`tcp:127.0.0.1:${addr.port}`, 'query-commands');
    assert.equal(r.status, 0, r.stderr);
    assert.ok((JSON.parse(r.stdout) as Array<{ name: string }>).some((c) => c.name === 'query-version'));
  } finally {
    await server.close();
  }
});

test('key=value arguments nest and take JSON values, like qmp-shell', () => {
  assert.deepEqual(parseCommandArgs(['addr.type=inet', 'addr.data.host=127.0.0.1', 'addr.data.port="10809"', 'max-connections=4', 'writable=true', 'name=disk']), {
    addr: { type: 'inet', data: { host: '127.0.0.1', port: '10809' } }, 'max-connections': 4, writable: true, name: 'disk',
  });
  assert.deepEqual(parseCommandArgs(['children=["a","b"]', 'description=a, b = c']), { children: ['a', 'b'], description: 'a, b = c' });
  assert.equal(parseCommandArgs([]), undefined);
  assert.throws(() => parseCommandArgs(['novalue']), /expected key=value/);
  assert.throws(() => parseCommandArgs(['a=1', 'a.b=2']), /used both as a value and as an object/);
  assert.throws(() => parseCommandArgs(['a=1', 'a=2']), /given twice/);
  assert.throws(() => parseCommandArgs(['[1]']), /expected key=value/);
});

test('QMP addresses are read as QEMU users write them', () => {
  assert.deepEqual(parseQmpAddress('/run/q.sock'), { path: '/run/q.sock' });
  assert.deepEqual(parseQmpAddress('unix:/run/q.sock,server=on,wait=off'), { path: '/run/q.sock' });
  assert.deepEqual(parseQmpAddress('unix:/odd,,name'), { path: '/odd,name' });
  assert.deepEqual(parseQmpAddress('tcp:127.0.0.1:4444,server,nodelay'), { host: '127.0.0.1', port: 4444 });
  assert.deepEqual(parseQmpAddress('tcp:[::1]:4444'), { host: '::1', port: 4444 });
  assert.deepEqual(parseQmpAddress('tcp::4444'), { host: '0.0.0.0', port: 4444 });
  assert.throws(() => parseQmpAddress('unix:/x,wait=on'), /wait=on is not supported/);
  assert.throws(() => parseQmpAddress('unix:/x,server=off'), /server=off/);
  assert.throws(() => parseQmpAddress('tcp:host'), /expected tcp:HOST:PORT/);
  assert.throws(() => parseQmpAddress('unix:/x,bogus=1'), /unknown QMP socket option/);
});
