/**
 * A qcow2 backing chain made by qemu-img and qemu-io, served by
 * `colo-blk daemon` and by qemu-nbd side by side: nbdinfo's maps
 * (base:allocation and qemu:allocation-depth), qemu-img map over NBD, and the
 * content must come out identical.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { requireTool, run, runOk, tempDir } from '../helpers/env.js';
import { coloDaemon, qemuNbd } from '../nbd/peers.js';

test('a qcow2 chain served by colo-blk maps and reads exactly as qemu-nbd serves it', async () => {
  for (const tool of ['qemu-img', 'qemu-io', 'qemu-nbd', 'nbdinfo', 'nbdcopy']) requireTool(tool);
  const dir = tempDir();
  const base = dir.file('base.qcow2');
  const mid = dir.file('mid.qcow2');
  const top = dir.file('top.qcow2');
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', mid]);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', mid, '-F', 'qcow2', top]);
  await runOk('qemu-io', ['-f', 'qcow2', base, '-c', 'write -P 0x11 0 2M', '-c', 'write -P 0x12 7M 512k']);
  await runOk('qemu-io', ['-f', 'qcow2', mid, '-c', 'write -P 0x22 2M 1M', '-c', 'write -z 7M 64k']);
  await runOk('qemu-io', ['-f', 'qcow2', top, '-c', 'write -P 0x33 4M 1M', '-c', 'write -z 6M 1M', '-c', 'discard 1M 64k',
    '-c', 'write -P 0x44 5M 512']);

  const colo = await coloDaemon([
    '--blockdev', `driver=qcow2,node-name=top,read-only=on,file.driver=file,file.filename=${top}`,
    '--nbd-server', `addr.type=unix,addr.path=${dir.file('colo.sock')}`,
    '--export', 'type=nbd,id=e0,node-name=top,name=disk,allocation-depth=on',
  ]);
  const qemu = await qemuNbd(top, dir.file('qemu.sock'), dir.file('qemu.pid'), ['-r', '-A', '-f', 'qcow2']);
  const coloUri = `nbd+unix:///disk?socket=${dir.file('colo.sock')}`;
  const qemuUri = `nbd+unix:///disk?socket=${dir.file('qemu.sock')}`;
  try {
    for (const args of [['--map'], ['--map=qemu:allocation-depth']]) {
      const [c, q] = await Promise.all([runOk('nbdinfo', [...args, coloUri]), runOk('nbdinfo', [...args, qemuUri])]);
      assert.equal(c.stdout, q.stdout, `nbdinfo ${args.join(' ')}`);
      assert.ok(c.stdout.split('\n').length > 5, 'the chain has structure to compare');
    }
    const maps = await Promise.all([coloUri, qemuUri].map((u) => runOk('qemu-img', ['map', '-f', 'raw', '--output=json', u])));
    assert.equal(maps[0]!.stdout, maps[1]!.stdout, 'qemu-img map over NBD');

    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', coloUri, top]);
    assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
    await Promise.all([runOk('nbdcopy', [coloUri, dir.file('colo.raw')]), runOk('nbdcopy', [qemuUri, dir.file('qemu.raw')])]);
    const a = readFileSync(dir.file('colo.raw'));
    assert.ok(a.equals(readFileSync(dir.file('qemu.raw'))), 'nbdcopy reads the same bytes from both servers');
    assert.ok(a.subarray(5 * 1024 * 1024, 5 * 1024 * 1024 + 512).every((b) => b === 0x44));
    assert.ok(a.subarray(1024 * 1024, 1024 * 1024 + 65536).every((b) => b === 0), 'the discard hides the base');
  } finally {
    await Promise.all([colo.stop(), qemu.stop()]);
    dir.cleanup();
  }
});

test('writes through colo-blk\'s NBD server into a qcow2 overlay leave an image qemu-img check passes', async () => {
  for (const tool of ['qemu-img', 'qemu-io', 'fio', 'nbdcopy']) requireTool(tool);
  const dir = tempDir();
  const base = dir.file('base.qcow2');
  const top = dir.file('top.qcow2');
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', base, '32M']);
  await runOk('qemu-io', ['-f', 'qcow2', base, '-c', 'write -P 0x5b 0 32M']);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  const colo = await coloDaemon([
    '--blockdev', `driver=qcow2,node-name=top,file.driver=file,file.filename=${top}`,
    '--nbd-server', `addr.type=unix,addr.path=${dir.file('nbd.sock')}`,
    '--export', 'type=nbd,id=e0,node-name=top,name=disk,writable=on',
  ]);
  const uri = `nbd+unix:///disk?socket=${dir.file('nbd.sock')}`;
  try {
    const r = await run('fio', ['--name=v', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=8M',
      '--offset=8M', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--randrepeat=0'], { cwd: dir.path });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    await runOk('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x77 100 5000', '-c', 'write -z -u 1M 1M', '-c', 'discard 4M 128k', '-c', 'flush']);
    await runOk('nbdcopy', [uri, dir.file('through-nbd.raw')]);
  } finally {
    assert.equal(await colo.stop(), 0, colo.stderr());
  }
  const check = await run('qemu-img', ['check', top]);
  assert.equal(check.status, 0, check.stdout + check.stderr);
  await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', top, dir.file('direct.raw')]);
  const direct = readFileSync(dir.file('direct.raw'));
  assert.ok(direct.equals(readFileSync(dir.file('through-nbd.raw'))), 'qemu reads what NBD clients read');
  assert.ok(direct.subarray(100, 5100).every((b) => b === 0x77));
  assert.ok(direct.subarray(1 << 20, 2 << 20).every((b) => b === 0));
  assert.ok(direct.subarray(16 << 20).every((b) => b === 0x5b), 'the backing shows where nothing was written');
  dir.cleanup();
});
