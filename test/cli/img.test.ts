import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CLI, requireTool, run, runOk, tempDir } from '../helpers/env.js';
import { refcountPos, writeBytes, hostOffset } from '../qcow2/surgery.js';

const img = (...args: string[]) => run(process.execPath, [CLI, 'img', ...args]);

test('img create makes images qemu-img accepts: sizes, cluster sizes, backing chains', async (t) => {
  requireTool('qemu-img');
  const dir = tempDir();
  t.after(dir.cleanup);
  const base = dir.file('base.qcow2');
  const top = dir.file('top.qcow2');
  const raw = dir.file('disk.raw');
  const c = await img('create', '-f', 'qcow2', '-o', 'cluster_size=4k,refcount_bits=16', base, '64M');
  assert.equal(c.status, 0, c.stderr);
  assert.match(c.stdout, /^Formatting '.*base\.qcow2', fmt=qcow2 cluster_size=4096 extended_l2=off compression_type=zlib size=67108864 lazy_refcounts=off refcount_bits=16$/m);
  const b = await img('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top);
  assert.equal(b.status, 0, b.stderr);
  assert.match(b.stdout, /size=67108864 backing_file=base\.qcow2 backing_fmt=qcow2/, 'size taken from the backing image');
  assert.equal((await img('create', '-f', 'raw', raw, '1M')).status, 0);
  await runOk('qemu-img', ['check', base]);
  await runOk('qemu-img', ['check', top]);
  const info = JSON.parse((await runOk('qemu-img', ['info', '--output=json', top])).stdout) as Record<string, unknown>;
  const ours = JSON.parse((await runOk(process.execPath, [CLI, 'img', 'info', '--output=json', top])).stdout) as Record<string, unknown>;
  for (const key of ['virtual-size', 'cluster-size', 'format', 'backing-filename', 'backing-filename-format', 'format-specific', 'dirty-flag']) {
    assert.deepEqual(ours[key], info[key], key);
  }
  assert.equal((await runOk('qemu-img', ['info', '--output=json', raw])).stdout.includes('"virtual-size": 1048576'), true);
  const noFmt = await img('create', '-f', 'qcow2', '-b', base, dir.file('x.qcow2'));
  assert.equal(noFmt.status, 1);
  assert.match(noFmt.stderr, /Backing file specified without backing format/);
  const badSize = await img('create', '-f', 'qcow2', dir.file('y.qcow2'), '12Q');
  assert.equal(badSize.status, 1);
  assert.match(badSize.stderr, /Invalid image size specified/);
});

test('img map agrees with qemu-img map on a chain written with whole clusters', async (t) => {
  requireTool('qemu-img');
  const dir = tempDir();
  t.after(dir.cleanup);
  const base = dir.file('base.qcow2');
  const top = dir.file('top.qcow2');
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  await runOk('qemu-io', ['-f', 'qcow2', base, '-c', 'write -P 1 0 1M', '-c', 'write -P 3 4M 192k']);
  await runOk('qemu-io', ['-f', 'qcow2', top, '-c', 'write -P 2 512k 128k', '-c', 'write -z 2M 64k', '-c', 'discard 4M 64k']);
  const qemu = (await runOk('qemu-img', ['map', '--output=json', top])).stdout;
  const ours = (await runOk(process.execPath, [CLI, 'img', 'map', '--output=json', top])).stdout;
  assert.deepEqual(JSON.parse(ours), JSON.parse(qemu));
  const qemuHuman = (await runOk('qemu-img', ['map', top])).stdout;
  const oursHuman = (await runOk(process.execPath, [CLI, 'img', 'map', top])).stdout;
  assert.equal(oursHuman, qemuHuman);
});

test('img check has qemu-img check exit codes: 0 clean, 3 leaks, 2 corruptions, 63 raw', async (t) => {
  requireTool('qemu-img');
  const dir = tempDir();
  t.after(dir.cleanup);
  const image = dir.file('disk.qcow2');
  await runOk(process.execPath, [CLI, 'img', 'create', '-q', '-f', 'qcow2', image, '1M']);
  await runOk(process.execPath, [CLI, 'io', image, '-c', 'write -P 9 0 64k']);
  const clean = await img('check', image);
  assert.equal(clean.status, 0, clean.stdout + clean.stderr);
  assert.match(clean.stdout, /No errors were found on the image\./);

  const rc0 = refcountPos(image, 0);
  writeBytes(image, rc0, Buffer.from([0, 2]));
  const leak = await img('check', image);
  assert.equal(leak.status, 3);
  assert.match(leak.stderr, /Leaked cluster 0 refcount=2 reference=1/);
  assert.match(leak.stdout, /1 leaked clusters were found on the image\./);
  const json = JSON.parse((await img('check', '--output=json', image)).stdout) as Record<string, number>;
  assert.equal(json.leaks, 1);
  const repaired = await img('check', '-r', 'leaks', image);
  assert.equal(repaired.status, 0, repaired.stdout + repaired.stderr);
  assert.equal((await run('qemu-img', ['check', image])).status, 0);

  const dataCluster = hostOffset(image, 0) / 65536;
  writeBytes(image, refcountPos(image, dataCluster), Buffer.from([0, 0]));
  const corrupt = await img('check', image);
  assert.equal(corrupt.status, 2);
  assert.equal((await run('qemu-img', ['check', image])).status, 2);
  assert.match(corrupt.stdout, /errors were found on the image/);

  const raw = dir.file('disk.raw');
  await runOk(process.execPath, [CLI, 'img', 'create', '-q', '-f', 'raw', raw, '1M']);
  const r = await img('check', raw);
  assert.equal(r.status, 63);
  assert.match(r.stderr, /does not support checks/);
  assert.equal((await img('check', dir.file('missing'))).status, 1);
});
