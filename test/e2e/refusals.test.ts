/**
 * What `colo-blk secondary` and `colo-blk primary` refuse to start on, as
 * processes: each refusal exits 1, prints no ready line, says in one line
 * which option is wrong and what to do about it, and leaves every file in
 * the folder byte for byte as it was (no image changed, no overlay created).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect as connectSocket, createServer, type Server } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { QmpClient } from '../../src/control/qmp-client.js';
import { requireTool, runOk, tempDir } from '../helpers/env.js';
import { MiB } from './model.js';
import { nbdUri } from './pair.js';
import { ProcessGroup } from './processes.js';

const SIZE = 16 * MiB;

/** Every entry of a folder: a hash for files, the kind for anything else. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of readdirSync(dir).sort()) {
    const path = `${dir}/${name}`;
    const st = statSync(path);
    out.set(name, st.isFile() ? createHash('sha256').update(readFileSync(path)).digest('hex') : st.isSocket() ? 'socket' : 'other');
  }
  return out;
}

/** Runs a refused command; returns its one message line after checking everything else. */
async function refusal(dir: string, args: string[]): Promise<string> {
  const before = snapshot(dir);
  const group = new ProcessGroup();
  const child = group.colo('refused', args, { COLO_BLK_LOG_LEVEL: 'info' });
  // A command that starts instead of refusing prints its ready line: stop it there.
  const started = child.waitReady().then(() => true, () => false);
  const exit = await Promise.race([child.exited, started.then(async (up) => {
    if (up) await group.killAll();
    return child.exited;
  })]);
  const r = { status: exit.code, stdout: child.stdout(), stderr: child.stderr() };
  const words = r.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{'));
  assert.equal(r.status, 1, `${args.join(' ')}: exit status\n${r.stdout}${r.stderr}`);
  assert.equal(r.stdout, '', `${args.join(' ')}: no ready line`);
  assert.equal(words.length, 1, `${args.join(' ')}: one line of message, got:\n${words.join('\n')}`);
  assert.deepEqual(snapshot(dir), before, `${args.join(' ')}: the folder changed`);
  return words[0]!;
}

function listenAnywhere(): Promise<{ server: Server; port: number }> {
  return new Promise((resolve) => {
    const server = createServer(() => undefined);
    server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as { port: number }).port }));
  });
}

/** Sets the qcow2 header's corrupt bit, as QEMU does when it finds damaged metadata. */
function setCorruptBit(path: string): void {
  const buf = readFileSync(path);
  buf.writeBigUInt64BE(buf.readBigUInt64BE(72) | 2n, 72);
  writeFileSync(path, buf);
}

describe('refusals', () => {
  const dir = tempDir('colo-blk-e2e-refusals-');
  const f = dir.file;
  let busy: { server: Server; port: number };

  before(async () => {
    requireTool('qemu-img');
    writeFileSync(f('disk.raw'), Buffer.alloc(SIZE, 0x5a));
    writeFileSync(f('big.raw'), Buffer.alloc(2 * SIZE, 0x5a));
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', f('small.qcow2'), String(SIZE / 2)]);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', f('truncated.qcow2'), String(SIZE)]);
    writeFileSync(f('truncated.qcow2'), readFileSync(f('truncated.qcow2')).subarray(0, 40));
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', f('disk.raw'), f('corrupt.qcow2')]);
    setCorruptBit(f('corrupt.qcow2'));
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', f('disk.raw'), f('disk.qcow2')]);
    busy = await listenAnywhere();
  });
  after(() => {
    busy.server.close();
    dir.cleanup();
  });

  const secondary = (...args: string[]): string[] => ['secondary', ...args];
  const primary = (...args: string[]): string[] => ['primary', ...args];
  const freeUnix = (): string => `unix:${f('free.sock')}`;

  test('secondary: command line mistakes', async () => {
    const cases: Array<[string[], RegExp]> = [
      [secondary('--listen', freeUnix()), /^colo-blk secondary: --disk: missing; give the secondary disk image \(a copy of the primary's disk\)$/],
      [secondary('--disk', f('disk.raw')), /^colo-blk secondary: --listen: missing; give the NBD server address, HOST:PORT or unix:PATH$/],
      [secondary('--disk', f('disk.raw'), '--listen', 'localhost'), /^colo-blk secondary: --listen: 'localhost' is not HOST:PORT or unix:PATH \(for example 127\.0\.0\.1:10809\)$/],
      [secondary('--disk', f('disk.raw'), '--listen', '127.0.0.1:70000'), /^colo-blk secondary: --listen: port 70000 in '127\.0\.0\.1:70000' is out of range: use 1 to 65535 \(0 picks a free port\)$/],
      [secondary('--disk', f('disk.raw'), '--listen', 'unix:'), /^colo-blk secondary: --listen: 'unix:' names no socket path: give unix:PATH$/],
      [secondary('--disk', f('disk.raw'), '--listen', freeUnix(), '--colour', 'red'), /^colo-blk secondary: unrecognized option '--colour' \(colo-blk secondary --help lists the options\)$/],
      [secondary('--disk', f('nope.raw'), '--listen', freeUnix()), /^colo-blk secondary: --disk: cannot open .*nope\.raw \(No such file or directory\): name an existing disk image$/],
      [secondary('--disk', f('disk.raw'), '--active', f('disk.raw'), '--listen', freeUnix()), /^colo-blk secondary: --active: the disk, the active and the hidden overlay must be three different files$/],
    ];
    for (const [args, expected] of cases) assert.match(await refusal(dir.path, args), expected);
  });

  test('secondary: a busy or foreign --listen or --qmp address, and no overlay is left behind', async () => {
    assert.match(await refusal(dir.path, secondary('--disk', f('disk.raw'), '--listen', `127.0.0.1:${busy.port}`)),
      new RegExp(`^colo-blk secondary: --listen: 127\\.0\\.0\\.1:${busy.port} is already in use: stop what listens there or choose another --listen address$`));
    assert.match(await refusal(dir.path, secondary('--disk', f('disk.raw'), '--listen', '192.0.2.1:10809')),
      /^colo-blk secondary: --listen: 192\.0\.2\.1:10809 is not an address of this host: choose one that is$/);
    // A live server's unix socket is not taken over (a primary reconnecting there would reach the wrong disk).
    const live = createServer(() => undefined);
    await new Promise<void>((resolve) => live.listen(f('live.sock'), () => resolve()));
    try {
      assert.match(await refusal(dir.path, secondary('--disk', f('disk.raw'), '--listen', `unix:${f('live.sock')}`)),
        /^colo-blk secondary: --listen: .*live\.sock is already in use: stop what listens there or choose another --listen address$/);
      assert.match(await refusal(dir.path, secondary('--disk', f('disk.raw'), '--listen', freeUnix(), '--qmp', f('live.sock'))),
        /^colo-blk secondary: --qmp: cannot listen on .*live\.sock: another server is listening there: stop it or choose another --qmp path$/);
      await new Promise<void>((resolve, reject) => {
        const probe = connectSocket(f('live.sock'), () => { probe.destroy(); resolve(); });
        probe.once('error', reject);
      });
    } finally {
      await new Promise<void>((resolve) => live.close(() => resolve()));
    }
  });

  test('secondary: damaged disks and unusable overlays', async () => {
    const cases: Array<[string[], RegExp]> = [
      [secondary('--disk', f('truncated.qcow2'), '--listen', freeUnix()),
        /^colo-blk secondary: --disk: cannot open .*truncated\.qcow2: Image is not in qcow2 format \(header is truncated\): the qcow2 image is damaged; repair it \(qemu-img check -r all\) or restore it from a copy$/],
      [secondary('--disk', f('corrupt.qcow2'), '--listen', freeUnix()),
        /^colo-blk secondary: --disk: cannot open .*corrupt\.qcow2: .*Image is corrupt; cannot be opened read\/write \(run qemu-img check -r all, or open it read-only\)$/],
      [secondary('--disk', f('disk.raw'), '--active', f('small.qcow2'), '--hidden', f('h.qcow2'), '--listen', freeUnix()),
        /^colo-blk secondary: --active: .*small\.qcow2 is 8 MiB \(8388608 bytes\) but the secondary disk is 16 MiB \(16777216 bytes\): name a new path \(it will be created\), or one of the disk's size$/],
      // A raw image named as an overlay is somebody's disk: the message must not suggest deleting it.
      [secondary('--disk', f('disk.raw'), '--hidden', f('big.raw'), '--listen', freeUnix()),
        /^colo-blk secondary: --hidden: .*big\.raw is not a qcow2 image, and overlays must be: name a new path \(it will be created\)$/],
      [secondary('--disk', f('disk.raw'), '--hidden', f('truncated.qcow2'), '--listen', freeUnix()),
        /^colo-blk secondary: --hidden: .*truncated\.qcow2 is a damaged qcow2 image \(.*\): repair it \(qemu-img check -r all\) or name a new path \(it will be created\)$/],
    ];
    for (const [args, expected] of cases) assert.match(await refusal(dir.path, args), expected);
  });

  test('primary: command line mistakes, damaged disk, unreachable secondary', async () => {
    const gone = await listenAnywhere();
    const closedPort = gone.port;
    await new Promise<void>((resolve) => gone.server.close(() => resolve()));
    const cases: Array<[string[], RegExp]> = [
      [primary('--secondary', 'nbd://127.0.0.1:1/parent0', '--listen', freeUnix()), /^colo-blk primary: --disk: missing; give the disk image to protect$/],
      [primary('--disk', f('disk.raw'), '--listen', freeUnix()), /^colo-blk primary: --secondary: missing; give the secondary's replication export \(nbd:\/\/HOST:PORT\/parent0\)$/],
      [primary('--disk', f('disk.raw'), '--secondary', '127.0.0.1:10809', '--listen', freeUnix()), /^colo-blk primary: --secondary: '127\.0\.0\.1:10809' is not an nbd:\/\/ or nbd\+unix:\/\/ URI$/],
      [primary('--disk', f('disk.raw'), '--secondary', 'nbd://127.0.0.1:1/parent0', '--listen', 'nowhere'), /^colo-blk primary: --listen: 'nowhere' is not HOST:PORT or unix:PATH/],
      [primary('--disk', f('disk.raw'), '--secondary', 'nbd://127.0.0.1:1/parent0', '--listen', freeUnix(), '--forward-window', '8M'),
        /^colo-blk primary: --forward-window: '8M' is not a number of bytes$/],
      [primary('--disk', f('corrupt.qcow2'), '--secondary', 'nbd://127.0.0.1:1/parent0', '--listen', freeUnix()), /^colo-blk primary: --disk: cannot open .*corrupt\.qcow2: .*Image is corrupt/],
      [primary('--disk', f('disk.qcow2'), '--secondary', `nbd://127.0.0.1:${closedPort}/parent0`, '--listen', freeUnix()),
        new RegExp(`^colo-blk primary: --secondary: cannot reach the secondary at nbd://127\\.0\\.0\\.1:${closedPort}/parent0 \\(.*Connection refused\\): start colo-blk secondary first and check the address$`)],
      [primary('--disk', f('disk.raw'), '--secondary', nbdUri(f('nobody.sock'), 'parent0'), '--listen', freeUnix()),
        /^colo-blk primary: --secondary: cannot reach the secondary at nbd\+unix:\/\/\/parent0\?socket=.*nobody\.sock \(.*No such file or directory\): start colo-blk secondary first and check the address$/],
    ];
    for (const [args, expected] of cases) assert.match(await refusal(dir.path, args), expected);
  });

  test('primary: a secondary disk of another size, and a busy --listen; the secondary is unharmed', async () => {
    const group = new ProcessGroup();
    const other = tempDir('colo-blk-e2e-refusals-sec-');
    try {
      writeFileSync(other.file('sec.raw'), Buffer.alloc(2 * SIZE, 0x5a));
      const sec = group.colo('secondary', ['secondary', '--disk', other.file('sec.raw'), '--listen', `unix:${other.file('s.nbd')}`, '--qmp', other.file('s.qmp')]);
      await sec.waitReady();
      const uri = nbdUri(other.file('s.nbd'), 'parent0');
      assert.match(await refusal(dir.path, primary('--disk', f('disk.raw'), '--secondary', uri, '--listen', freeUnix())),
        /^colo-blk primary: --secondary: the secondary disk is 32 MiB \(33554432 bytes\) but the primary disk is 16 MiB \(16777216 bytes\): give the secondary a copy of this disk$/);
      assert.match(await refusal(dir.path, primary('--disk', f('big.raw'), '--secondary', nbdUri(other.file('s.nbd'), 'parent1'), '--listen', freeUnix())),
        /^colo-blk primary: --secondary: the secondary at nbd\+unix:\/\/\/parent1\?socket=.* has no export 'parent1': name its replication export \(parent0 on colo-blk and in QEMU's recipe\)$/);
      assert.match(await refusal(dir.path, primary('--disk', f('big.raw'), '--secondary', uri, '--listen', `127.0.0.1:${busy.port}`)),
        /^colo-blk primary: --listen: 127\.0\.0\.1:\d+ is already in use: stop what listens there or choose another --listen address$/);
      const qmp = await QmpClient.connect(other.file('s.qmp'));
      assert.deepEqual(await qmp.execute('query-xen-replication-status'), { error: false });
      await qmp.close();
      assert.equal((await sec.kill('SIGTERM')).code, 0, sec.tail());
    } finally {
      await group.killAll();
      other.cleanup();
    }
  });
});
