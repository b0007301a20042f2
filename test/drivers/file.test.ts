/**
 * The `file` driver's two I/O paths: requests up to 1 MiB inline on the
 * event loop, larger ones (and all of them while the device is slow)
 * through libuv's thread pool. Both must give the same bytes; a device that
 * is slow several requests in a row must move the node to the pool; one
 * slow request (the loop preempted) must not.
 */
import assert from 'node:assert/strict';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { FileNode } from '../../src/drivers/file.js';
import { patternBuffer, tempDir } from '../helpers/env.js';

const fsCjs = createRequire(import.meta.url)('node:fs') as typeof import('node:fs');

/** Replaces fs functions (for the driver's `import * as fs` too) until the returned undo runs. */
function patchFs(patches: Partial<Record<'writeSync' | 'write', (...args: never[]) => unknown>>): () => void {
  const saved = new Map<string, unknown>();
  for (const [name, fn] of Object.entries(patches)) {
    saved.set(name, (fsCjs as unknown as Record<string, unknown>)[name]);
    (fsCjs as unknown as Record<string, unknown>)[name] = fn;
  }
  syncBuiltinESMExports();
  return () => {
    for (const [name, fn] of saved) (fsCjs as unknown as Record<string, unknown>)[name] = fn;
    syncBuiltinESMExports();
  };
}

function busyWait(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) { /* a device that takes its time */ }
}

test('inline and pooled requests read and write the same bytes, past the end too', async () => {
  const dir = tempDir('colo-blk-file-');
  const path = dir.file('f.raw');
  writeFileSync(path, patternBuffer(3 << 20, 1));
  const node = await FileNode.open(path);
  try {
    for (const [offset, length] of [[0, 4096], [12345, 65537], [1 << 20, 1 << 20], [5, (1 << 20) + 1], [(2 << 20) + 7, 3 << 19]] as const) {
      const data = patternBuffer(length, offset + length);
      await node.write(offset, data);
      const back = Buffer.alloc(length);
      await node.read(offset, back);
      assert.ok(back.equals(data), `${length} bytes at ${offset}`);
      assert.ok(readFileSync(path).subarray(offset, offset + length).equals(data));
    }
    const size = node.size;
    const tail = Buffer.alloc(8192, 0xff);
    await node.read(size - 4096, tail);
    assert.ok(tail.subarray(4096).equals(Buffer.alloc(4096)), 'bytes past the end read as zeroes');
    await node.write(size + 4096, Buffer.alloc(512, 7));
    assert.equal(node.size, size + 4608, 'a write past the end extends the file');
  } finally {
    await node.close();
    dir.cleanup();
  }
});

test('the callback API calls back after the caller returns, inline or not', async () => {
  const dir = tempDir('colo-blk-file-');
  const path = dir.file('f.raw');
  writeFileSync(path, Buffer.alloc(1 << 20));
  const node = await FileNode.open(path);
  try {
    for (const length of [512, 2 << 20]) {
      let returned = false;
      await new Promise<void>((resolve, reject) => {
        node.pwriteCallback(Buffer.alloc(length, 3), 0, (err) => {
          if (!returned) reject(new Error('called back before pwriteCallback returned'));
          else if (err) reject(err);
          else resolve();
        });
        returned = true;
      });
      returned = false;
      await new Promise<void>((resolve, reject) => {
        node.preadCallback(Buffer.alloc(length), 0, (err) => {
          if (!returned) reject(new Error('called back before preadCallback returned'));
          else if (err) reject(err);
          else resolve();
        });
        returned = true;
      });
    }
  } finally {
    await node.close();
    dir.cleanup();
  }
});

test('a device slow three requests in a row moves small requests to the thread pool; one slow request does not', async () => {
  const dir = tempDir('colo-blk-file-');
  const path = dir.file('f.raw');
  writeFileSync(path, Buffer.alloc(1 << 20));
  const node = await FileNode.open(path);
  let slow = 0;
  let pooled = 0;
  const realWriteSync = fsCjs.writeSync;
  const realWrite = fsCjs.write;
  const undo = patchFs({
    writeSync: ((...args: Parameters<typeof fsCjs.writeSync>) => {
      if (slow > 0) {
        slow--;
        busyWait(1);
      }
      return (realWriteSync as (...a: unknown[]) => number)(...args);
    }) as never,
    write: ((...args: unknown[]) => {
      pooled++;
      return (realWrite as (...a: unknown[]) => void)(...args);
    }) as never,
  });
  try {
    slow = 1;
    for (let i = 0; i < 4; i++) await node.write(i * 4096, Buffer.alloc(4096, 1));
    assert.equal(pooled, 0, 'one slow write (a preempted loop) keeps the inline path');
    slow = 3;
    for (let i = 0; i < 3; i++) await node.write(i * 4096, Buffer.alloc(4096, 2));
    assert.equal(pooled, 0);
    await node.write(0, Buffer.alloc(4096, 3));
    assert.equal(pooled, 1, 'after three slow writes in a row, the next one goes through the pool');
    const back = Buffer.alloc(4096);
    await node.read(0, back);
    assert.ok(back.equals(Buffer.alloc(4096, 3)));
  } finally {
    undo();
    await node.close();
    dir.cleanup();
  }
});
