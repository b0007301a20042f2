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
