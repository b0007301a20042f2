/**
 * `colo-blk daemon` as a real process, driven by the real NBD clients:
 * qemu-io, qemu-img, nbdinfo, nbdcopy, fio's nbd engine, nbd-client's list
 * handshake and nbdsh for the edge cases libnbd would normally refuse to send.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { patternBuffer, requireTool, run, runOk, sparseFile, tempDir } from '../helpers/env.js';
import { coloDaemon, type ColoDaemon } from '../nbd/peers.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const dir = tempDir();
const image = dir.file('disk.raw');
let daemon: ColoDaemon;
let uri: string;
let chainUri: string;

before(async () => {
  sparseFile(image, SIZE);
  daemon = await coloDaemon([
    '--blockdev', `driver=file,node-name=file0,filename=${image}`,
    '--blockdev', '{"driver":"raw","node-name":"disk0","file":"file0"}',
    '--blockdev', 'driver=memory,node-name=base,size=8M',
    '--blockdev', 'driver=memory,node-name=hidden,backing=base',
    '--blockdev', 'driver=memory,node-name=active,backing=hidden',
    '--nbd-server', 'addr.type=inet,addr.host=127.0.0.1,addr.port=0',
    '--export', 'type=nbd,id=e0,node-name=disk0,name=disk,writable=on,description=the raw disk',
    '--export', 'type=nbd,id=e1,node-name=base,writable=on',
    '--export', 'type=nbd,id=e2,node-name=hidden,writable=on',
    '--export', 'type=nbd,id=e3,node-name=active,writable=on,allocation-depth=on',
    '--pidfile', dir.file('daemon.pid'),
  ]);
  uri = `nbd://127.0.0.1:${daemon.port}/disk`;
  chainUri = `nbd://127.0.0.1:${daemon.port}/active`;
  // base: data in its first 2 MiB; hidden: 1 MiB at 2 MiB; active: 1 MiB at 4 MiB, zeroes at 6 MiB.
  requireTool('qemu-io');
  await runOk('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${daemon.port}/base`, '-c', 'write -P 0x11 0 2M']);
  await runOk('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${daemon.port}/hidden`, '-c', 'write -P 0x22 2M 1M']);
  await runOk('qemu-io', ['-f', 'raw', chainUri, '-c', 'write -P 0x33 4M 1M', '-c', 'write -z -u 6M 1M']);
});

after(async () => {
  await daemon?.stop();
  dir.cleanup();
});

function qemuIo(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return run('qemu-io', ['-f', 'raw', uri, ...args.flatMap((c) => ['-c', c])]);
}

test('qemu-io: pattern writes and reads, write-zeroes with and without unmap, discard, flush', async () => {
  requireTool('qemu-io');
  const w = await qemuIo(['write -P 0xa5 0 1M', 'write -P 0x5a 1M 64k', 'write -P 0x77 3000 1000', 'flush']);
  assert.equal(w.status, 0, w.stderr);
  const r = await qemuIo(['read -P 0xa5 0 3000', 'read -P 0x77 3000 1000', 'read -P 0xa5 4000 1044576', 'read -P 0x5a 1M 64k']);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.doesNotMatch(r.stdout, /Pattern verification failed/);
  const z = await qemuIo(['write -z 8k 8k', 'write -z -u 64k 64k', 'discard 512k 64k', 'write -z 512k 64k', 'read -P 0 8k 8k', 'read -P 0 64k 64k', 'flush']);
  assert.equal(z.status, 0, z.stdout + z.stderr);
  const img = readFileSync(image);
  assert.ok(img.subarray(0, 3000).every((b) => b === 0xa5));
  assert.ok(img.subarray(3000, 4000).every((b) => b === 0x77));
  assert.ok(img.subarray(8192, 16384).every((b) => b === 0));
  assert.ok(img.subarray(MiB, MiB + 65536).every((b) => b === 0x5a));
  const bad = await qemuIo(['read -P 0x99 0 512']);
  assert.match(bad.stdout, /Pattern verification failed at offset 0/, 'a wrong pattern is caught, so the checks above mean something');
});

test('qemu-img compare and convert both ways against the image file', async () => {
  requireTool('qemu-img');
  const src = dir.file('src.raw');
  const data = patternBuffer(8 * MiB, 5);
  const full = Buffer.alloc(SIZE);
  data.copy(full, 16 * MiB);
  writeFileSync(src, full);
  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri]);
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri]);
  assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
  assert.match(cmp.stdout, /Images are identical/);
  const back = dir.file('back.raw');
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, back]);
  assert.ok(readFileSync(back).equals(full));
  assert.ok(readFileSync(image).equals(full));
  writeFileSync(src, Buffer.alloc(SIZE, 1));
  const differ = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri]);
  assert.equal(differ.status, 1, 'compare notices a difference');
});

test('qemu-img map over a memory overlay chain: data, zeroes and unallocated ranges', async () => {
  requireTool('qemu-img');
  const r = await runOk('qemu-img', ['map', '-f', 'raw', '--output=json', chainUri]);
  const map = JSON.parse(r.stdout) as Array<{ start: number; length: number; zero: boolean; data: boolean }>;
  const summary = map.map((e) => [e.start / MiB, e.length / MiB, e.data, e.zero]);
  assert.deepEqual(summary, [[0, 3, true, false], [3, 1, false, true], [4, 1, true, false], [5, 3, false, true]]);
});

test('nbdinfo --list, --map and --map=qemu:allocation-depth', async () => {
  requireTool('nbdinfo');
  const list = await runOk('nbdinfo', ['--list', `nbd://127.0.0.1:${daemon.port}`]);
  for (const name of ['disk', 'base', 'hidden', 'active']) assert.match(list.stdout, new RegExp(`export="${name}"`));
  assert.match(list.stdout, /description: the raw disk/);
  const exportsText = list.stdout.split(/(?=export=)/);
  assert.match(exportsText.find((t) => t.startsWith('export="active"'))!, /qemu:allocation-depth/);
  assert.doesNotMatch(exportsText.find((t) => t.startsWith('export="disk"'))!, /qemu:allocation-depth/, 'offered only where enabled, as in QEMU');
  assert.match(list.stdout, /block_size_maximum: 33554432/);
  const map = await runOk('nbdinfo', ['--map', chainUri]);
  assert.deepEqual(map.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).slice(0, 3)), [
    ['0', String(3 * MiB), '0'],
    [String(3 * MiB), String(MiB), '3'],
    [String(4 * MiB), String(MiB), '0'],
    [String(5 * MiB), String(3 * MiB), '3'],
  ]);
  const depth = await runOk('nbdinfo', ['--map=qemu:allocation-depth', chainUri]);
  assert.deepEqual(depth.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).slice(0, 3)), [
    ['0', String(2 * MiB), '3'],
    [String(2 * MiB), String(MiB), '2'],
    [String(3 * MiB), String(MiB), '0'],
    [String(4 * MiB), String(MiB), '1'],
    [String(5 * MiB), String(MiB), '0'],
    [String(6 * MiB), String(MiB), '1'],
    [String(7 * MiB), String(MiB), '0'],
  ]);
});

test('nbdcopy round trips are byte for byte', async () => {
  requireTool('nbdcopy');
  const src = dir.file('copy-src.raw');
  const data = Buffer.alloc(SIZE);
  patternBuffer(20 * MiB, 9).copy(data, 3 * MiB);
  patternBuffer(MiB, 10).copy(data, 60 * MiB);
  writeFileSync(src, data);
  await runOk('nbdcopy', [src, uri]);
  const out = dir.file('copy-out.raw');
  await runOk('nbdcopy', [uri, out]);
  assert.ok(readFileSync(out).equals(data));
  assert.ok(readFileSync(image).equals(data));
});

test('fio --ioengine=nbd with crc32c verification at queue depth 16', async () => {
  requireTool('fio');
  const r = await run('fio', ['--name=verify', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
    '--size=16M', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--output-format=json', '--randrepeat=0',
    '--verify_state_save=0'], { cwd: dir.path });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { total_ios: number }; read: { total_ios: number } }> }).jobs[0]!;
  assert.equal(job.error, 0);
  assert.equal(job.write.total_ios, 4096);
  assert.equal(job.read.total_ios, 4096, 'every block was read back and verified');
});

test('nbd-client -l lists the exports over the kernel client\'s handshake', async () => {
  requireTool('nbd-client');
  const r = await runOk('nbd-client', ['-l', '127.0.0.1', String(daemon.port)], { env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin` } });
  for (const name of ['disk', 'base', 'hidden', 'active']) assert.match(r.stdout, new RegExp(`^${name}`, 'm'));
});

const NBDSH_EDGES = `
import json, sys, nbd
uri = sys.argv[1]
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(uri)
size = h.get_size()
out = {}
def err(fn):
    try:
        fn()
        return 0
    except nbd.Error as e:
        return e.errno  # libnbd gives the errno's name
out['read_past_end'] = err(lambda: h.pread(512, size - 256))
out['write_past_end'] = err(lambda: h.pwrite(b'x' * 512, size - 256))
out['zero_past_end'] = err(lambda: h.zero(512, size))
out['trim_past_end'] = err(lambda: h.trim(512, size))
out['unknown_flag'] = err(lambda: h.pread(512, 0, flags=0x40))
out['zero_len_read'] = err(lambda: h.pread(0, 0))
out['status_past_end'] = err(lambda: h.block_status(512, size, lambda *a: 0))
out['fast_zero'] = err(lambda: h.zero(4096, 0, flags=nbd.CMD_FLAG_FAST_ZERO))
out['cache'] = err(lambda: h.cache(4096, 0))
out['df_read'] = len(h.pread(65536, 0, flags=nbd.CMD_FLAG_DF))
out['still_ok'] = len(h.pread(4096, 0))
out['can_multi_conn'] = h.can_multi_conn()
out['can_fast_zero'] = h.can_fast_zero()
h2 = nbd.NBD()
h2.set_opt_mode(True)
h2.connect_uri(uri)
ctx = []
h2.opt_list_meta_context(lambda name: ctx.append(name) or 0)
out['contexts'] = ctx
h2.opt_abort()
print(json.dumps(out))
`;

test('nbdsh (libnbd, strict mode off): out-of-range and malformed requests get the spec errnos', async () => {
  requireTool('nbdsh');
  const r = await runOk('/usr/bin/python3', ['-c', NBDSH_EDGES, uri]);
  const out = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.deepEqual(out, {
    read_past_end: 'EINVAL',
    write_past_end: 'ENOSPC',
    zero_past_end: 'ENOSPC',
    trim_past_end: 'EINVAL',
    unknown_flag: 'EINVAL',
    zero_len_read: 0,
    status_past_end: 'EINVAL',
    fast_zero: 'ENOTSUP',
    cache: 0,
    df_read: 65536,
    still_ok: 4096,
    can_multi_conn: true,
    can_fast_zero: true,
    contexts: ['base:allocation'],
  });
});
