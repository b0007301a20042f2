import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { NbdConnection, parseNbdUri, waitForNbd } from '../../bench/pair/nbd-client.js';
import { freePort } from '../../bench/pair/system.js';
import { patternBuffer, requireTool, sparseFile, tempDir } from '../helpers/env.js';

test('nbd URIs parse into host, port and export name', () => {
  assert.deepEqual(parseNbdUri('nbd://127.0.0.1:10809/pvm'), { host: '127.0.0.1', port: 10809, name: 'pvm' });
  assert.deepEqual(parseNbdUri('nbd://[::1]:1/'), { host: '::1', port: 1, name: '' });
  assert.deepEqual(parseNbdUri('nbd://h:2/a%20b'), { host: 'h', port: 2, name: 'a b' });
  assert.throws(() => parseNbdUri('nbd+unix:///x?socket=/s'), /not an nbd:\/\/HOST:PORT\/NAME URI/);
});

test('the harness NBD client writes, reads and flushes through qemu-nbd byte-exactly', async (t) => {
  requireTool('qemu-nbd');
  const dir = tempDir('colo-blk-bench-nbd-');
  t.after(() => dir.cleanup());
  const size = 24 << 20;
  const image = sparseFile(dir.file('disk.raw'), size);
  const port = await freePort();
  const server = spawn('qemu-nbd', ['-f', 'raw', '-b', '127.0.0.1', '-p', String(port), '-x', 'disk', '-t', image], { stdio: 'ignore' });
  t.after(() => server.kill('SIGKILL'));
  const uri = `nbd://127.0.0.1:${port}/disk`;
  await waitForNbd(uri, 10_000, () => server.exitCode === null);

  const c = await NbdConnection.connect(uri);
  assert.equal(c.size, size);
  // Larger than one request, unaligned, so it is split and pipelined.
  const data = patternBuffer(9 * (1 << 20) + 4096 + 17, 7);
  await c.write(12345, data);
  await c.writePattern(20 << 20, (1 << 20) + 3, 0x5a);
  await c.flush();
  assert.ok((await c.read(12345, data.length)).equals(data));
  const file = readFileSync(image);
  assert.ok(file.subarray(12345, 12345 + data.length).equals(data));
  assert.ok(file.subarray(20 << 20, (21 << 20) + 3).equals(Buffer.alloc((1 << 20) + 3, 0x5a)));
  assert.equal(file[(21 << 20) + 3], 0);
  // A request past the end fails that request only; the connection goes on.
  await assert.rejects(c.write(size - 10, Buffer.alloc(20)), /errno/);
  assert.ok((await c.read(0, 4096)).equals(Buffer.alloc(4096)));
  await c.close();
  await c.close();
  await assert.rejects(c.flush(), /closed/);

  await assert.rejects(NbdConnection.connect(`nbd://127.0.0.1:${port}/nope`), /export 'nope' refused/);
});
