import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CLI, requireTool, run, runOk, sparseFile, tempDir } from '../helpers/env.js';

async function io(args: string[]) {
  return run(process.execPath, [CLI, 'io', ...args]);
}

test('colo-blk io writes patterns that qemu-io reads, and reads what qemu-io wrote', async (t) => {
  requireTool('qemu-io');
  const dir = tempDir();
  t.after(dir.cleanup);
  const img = dir.file('disk.raw');
  sparseFile(img, 4 * 1024 * 1024);
  const w = await io(['-f', 'raw', img, '-c', 'write -P 0x5a 64k 128k', '-c', 'write -z 1M 4k', '-c', 'write -P 7 3 5']);
  assert.equal(w.status, 0, w.stdout + w.stderr);
  assert.match(w.stdout, /^wrote 131072\/131072 bytes at offset 65536$/m);
  await runOk('qemu-io', ['-f', 'raw', img, '-c', 'read -P 0x5a 64k 128k', '-c', 'read -P 0 1M 4k', '-c', 'read -P 7 3 5', '-c', 'read -P 0 0 3', '-c', 'write -P 0x66 2M 1k']);
  const r = await io(['-f', 'raw', '-r', img, '-c', 'read -P 0x66 2M 1k', '-c', 'read -P 0 8 1k']);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^read 1024\/1024 bytes at offset 2097152$/m);
});

test('a failed pattern check names the offset and fails the run', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const img = dir.file('disk.raw');
  sparseFile(img, 1024 * 1024);
  await runOk(process.execPath, [CLI, 'io', '-f', 'raw', img, '-c', 'write -P 1 4096 4096', '-c', 'write -P 2 6000 1']);
  const r = await io(['-f', 'raw', img, '-c', 'read -P 1 4096 4096', '-c', 'read -P 0 0 512']);
  assert.equal(r.status, 1);
  assert.match(r.stdout, /Pattern verification failed at offset 4096, 4096 bytes/);
  assert.match(r.stdout, /first mismatch at offset 6000 \(0x1770\): expected 0x01, found 0x02/);
  assert.doesNotMatch(r.stdout, /offset 0, 512 bytes/, 'the second read passes');
});

test('read-only images refuse writes, unknown commands and bad sizes fail, missing files are named', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const img = dir.file('disk.raw');
  sparseFile(img, 65536);
  const ro = await io(['-r', '-f', 'raw', img, '-c', 'write 0 1']);
  assert.equal(ro.status, 1);
  assert.match(ro.stderr, /Block node is read-only/);
  const bad = await io(['-f', 'raw', img, '-c', 'bogus', '-c', 'read 0 1x', '-c', 'read 0 128k']);
  assert.equal(bad.status, 1);
  assert.match(bad.stdout, /command "bogus" not found/);
  assert.match(bad.stdout, /invalid count specified: 1x/);
  assert.match(bad.stdout, /read failed: Input\/output error/);
  const missing = await io([dir.file('nosuch'), '-c', 'read 0 1']);
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /Could not open '.*nosuch': No such file or directory$/m);
});

test('map and alloc follow qemu-io output on a memory overlay chain', async () => {
  const opts = JSON.stringify({ driver: 'memory', size: 1048576, backing: { driver: 'memory', size: 1048576 } });
  const r = await io(['--image-opts', opts, '-c', 'write -P 1 64k 64k', '-c', 'map', '-c', 'alloc 0 256k', '-c', 'alloc 64k']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^64 KiB \(0x10000\) bytes not allocated at offset 0 bytes \(0x0\)$/m);
  assert.match(r.stdout, /^64 KiB \(0x10000\) bytes {5}allocated at offset 64 KiB \(0x10000\)$/m);
  assert.match(r.stdout, /^896 KiB \(0xe0000\) bytes not allocated at offset 128 KiB \(0x20000\)$/m);
  assert.match(r.stdout, /^65536\/262144 bytes allocated at offset 0 bytes$/m);
  assert.match(r.stdout, /^512\/512 bytes allocated at offset 64 KiB$/m);
});
