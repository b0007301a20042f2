/**
 * The `colo-blk daemon` command line as a process: option errors, readiness,
 * and a clean exit on SIGTERM/SIGINT.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { daemonMain } from '../../src/cli/daemon.js';
import { NODE_FLAGS } from '../../src/cli/node-flags.js';
import { NbdClient } from '../../src/nbd/client.js';
import { CLI, patternBuffer, run, sparseFile, tempDir } from '../helpers/env.js';
import { coloDaemon } from '../nbd/peers.js';

function daemon(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return run(process.execPath, [CLI, 'daemon', ...args], { env: { ...process.env, COLO_BLK_LOG_LEVEL: 'error' } });
}

const SERVER = 'addr.type=inet,addr.host=127.0.0.1,addr.port=0';

test("the executable's shebang starts Node with the flags every other launcher passes", async () => {
  const shebang = readFileSync(CLI, 'utf8').split('\n', 1)[0]!;
  assert.equal(shebang, `#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`);
  // The build leaves the script executable: the kernel reads that line.
  const r = await run(CLI, ['--help']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^usage: colo-blk <command>/);
});

test('bad options get a message naming the option and exit status 1', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['--bogus'], /--bogus: unrecognized option/],
    [['--blockdev'], /--blockdev: requires an argument/],
    [['--blockdev', '{"driver":'], /--blockdev: invalid JSON/],
    [['--blockdev', 'driver=nosuch,node-name=x'], /--blockdev: Parameter 'driver' does not accept value 'nosuch'/],
    [['--blockdev', 'driver=memory,node-name=m,size=1M,colour=red'], /--blockdev: Block format 'memory' does not support the option 'colour'/],
    [['--nbd-server', 'addr.type=inet,addr.host=127.0.0.1,addr.port=99999'], /--nbd-server: Invalid port '99999'/],
    [['--nbd-server', 'max-connections=2'], /--nbd-server: Parameter 'addr' is missing/],
    [['--nbd-server', `${SERVER},tls-creds=t0`], /--nbd-server: TLS is not supported/],
    [['--nbd-server', `${SERVER},colour=red`], /--nbd-server: Parameter 'colour' is unexpected/],
    [['--export', 'type=nbd,id=e0,node-name=m'], /--export: NBD server not running/],
    [['--nbd-server', SERVER, '--export', 'type=nbd,id=e0,node-name=m'], /--export: Cannot find device='m' nor node-name='m'/],
    [['--export', 'type=vhost-user-blk,id=e0,node-name=m'], /--export: Parameter 'type' does not accept value 'vhost-user-blk'/],
    [['--export', 'type=nbd,node-name=m'], /--export: Parameter 'id' is missing/],
    [['--blockdev', 'driver=memory,node-name=m,size=1M', '--nbd-server', SERVER, '--export', 'type=nbd,id=e0,node-name=m',
      '--export', 'type=nbd,id=e0,node-name=m,name=other'], /--export: Block export id 'e0' is already in use/],
    [['--blockdev', 'driver=memory,node-name=m,size=1M', '--nbd-server', SERVER, '--export', 'type=nbd,id=e0,node-name=m',
      '--export', 'type=nbd,id=e1,node-name=m'], /--export: NBD server already has export named 'm'/],
    [['--blockdev', 'driver=memory,node-name=m,size=1M,read-only=on', '--nbd-server', SERVER, '--export', 'type=nbd,id=e0,node-name=m,writable=on'],
      /--export: Cannot export read-only node 'm' as writable/],
    [['--object', 'tls-creds-x509,id=t0'], /--object: not supported by this daemon/],
    [['--monitor', 'chardev=nope'], /--monitor: chardev "nope" not found/],
    [['--chardev', 'file,id=f,path=/tmp/x'], /--chardev: chardev backend 'file' is not supported/],
    [['--qmp', 'unix:/tmp/q.sock,server=off'], /--qmp: colo-blk serves QMP; server=off/],
    [['--log-level', 'loud'], /--log-level: unknown level 'loud'/],
    [['stray'], /stray: unexpected argument/],
  ];
  for (const [args, message] of cases) {
    let stdout = '';
    let stderr = '';
    const status = await daemonMain(args, undefined, { stdout: (t) => { stdout += t; }, stderr: (t) => { stderr += t; } });
    assert.equal(status, 1, `${args.join(' ')}: ${stderr}`);
    assert.match(stderr, message);
    assert.equal(stdout, '', 'no ready line on failure');
  }
  // And as a real process: the status reaches the shell.
  const r = await daemon(['--export', 'type=nbd,id=e0,node-name=m']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^colo-blk daemon: --export: NBD server not running$/m);
});

test('ready line, pidfile and socket; SIGTERM flushes, closes and exits 0; SIGINT too', async () => {
  const dir = tempDir();
  try {
    const image = sparseFile(dir.file('d.raw'), 8 << 20);
    const pidfile = dir.file('d.pid');
    const sock = dir.file('d.sock');
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const d = await coloDaemon([
        '--blockdev', `driver=file,node-name=f,filename=${image}`,
        '--blockdev', 'driver=raw,node-name=disk,file=f',
        '--nbd-server', `addr.type=unix,addr.path=${sock}`,
        '--export', 'type=nbd,id=e,node-name=disk,writable=on',
        '--pidfile', pidfile,
      ]);
      assert.equal(d.ready.event, 'daemon.ready');
      assert.equal(d.ready.nbd, `unix:${sock}`);
      assert.deepEqual(d.ready.exports, ['disk']);
      assert.equal(readFileSync(pidfile, 'utf8').trim(), String(d.ready.pid));
      const c = await NbdClient.connect({ type: 'unix', path: sock }, { exportName: 'disk' });
      const data = patternBuffer(1 << 20, signal.length);
      await c.write(4096, data); // no FUA, no flush: the shutdown must flush it
      c.destroy();
      assert.equal(await d.stop(signal), 0, d.stderr());
      assert.ok(!existsSync(pidfile), 'pidfile removed on exit');
      assert.ok(!existsSync(sock), 'socket removed on exit');
      assert.ok(readFileSync(image).subarray(4096, 4096 + data.length).equals(data));
    }
  } finally {
    dir.cleanup();
  }
});

test('a pidfile naming a live process is refused; a stale one is replaced', async () => {
  const dir = tempDir();
  try {
    const pidfile = dir.file('p.pid');
    writeFileSync(pidfile, `${process.pid}\n`);
    const busy = await daemon(['--pidfile', pidfile]);
    assert.equal(busy.status, 1);
    assert.match(busy.stderr, new RegExp(`--pidfile: .* belongs to running process ${process.pid}`));
    writeFileSync(pidfile, '999999999\n');
    const d = await coloDaemon(['--pidfile', pidfile]);
    assert.equal(readFileSync(pidfile, 'utf8').trim(), String(d.ready.pid));
    assert.equal(d.ready.nbd, null, 'no NBD server was asked for');
    assert.equal(await d.stop(), 0);
  } finally {
    dir.cleanup();
  }
});

test('QMP monitors from --chardev/--monitor and --qmp; quit stops the daemon cleanly', async () => {
  const { QmpClient } = await import('../../src/control/qmp-client.js');
  const dir = tempDir();
  try {
    const image = sparseFile(dir.file('q.raw'), 4 << 20);
    const d = await coloDaemon([
      '--chardev', `socket,id=mon0,path=${dir.file('mon.sock')},server=on,wait=off`,
      '--monitor', 'chardev=mon0',
      '--qmp', `unix:${dir.file('qmp2.sock')},server=on,wait=off`,
      '--blockdev', `driver=raw,node-name=disk,file.driver=file,file.filename=${image}`,
      '--nbd-server', `addr.type=unix,addr.path=${dir.file('nbd.sock')}`,
      '--pidfile', dir.file('q.pid'),
    ]);
    assert.deepEqual(d.ready.qmp, [`unix:${dir.file('mon.sock')}`, `unix:${dir.file('qmp2.sock')}`]);
    const q = await QmpClient.connect({ path: dir.file('mon.sock') });
    await q.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'disk', writable: true });
    const other = await QmpClient.connect({ path: dir.file('qmp2.sock') });
    assert.deepEqual(await other.execute('query-block-exports'), [{ type: 'nbd', id: 'e0', 'node-name': 'disk', 'shutting-down': false }]);
    const c = await NbdClient.connect({ type: 'unix', path: dir.file('nbd.sock') }, { exportName: 'disk' });
    await c.write(0, Buffer.alloc(4096, 0x61));
    await c.close();
    await q.execute('quit');
    assert.equal(await d.exited, 0, d.stderr());
    assert.ok(!existsSync(dir.file('q.pid')));
    assert.ok(readFileSync(image).subarray(0, 4096).every((b) => b === 0x61));
    await Promise.all([q.close(), other.close()]);
  } finally {
    dir.cleanup();
  }
});
