/**
 * I/O errors from the file under the image: the failing request or flush
 * gets the error, nothing acknowledged is lost, and once the file works
 * again the next flush writes everything back and the image checks clean.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { BlockError } from '../../src/block/errors.js';
import { createGraph } from '../../src/drivers/index.js';
import { buildImage } from '../../src/drivers/qcow2/create.js';
import { patternBuffer, tempDir } from '../helpers/env.js';
import { KiB, MiB, assertQemuCheckClean, assertSameBytes, qemuImg, readAll } from './helpers.js';
import { MemoryFile, memoryFileDriver } from './memory-file.js';

const isEio = (e: unknown): boolean => BlockError.is(e) && e.code === 'EIO';

test('failed writes and flushes are reported, retried flushes succeed, the image stays clean', async () => {
  const dir = tempDir();
  const size = 8 * MiB;
  const file = new MemoryFile(buildImage({ size, clusterSize: 4096 }));
  const graph = createGraph();
  graph.register(memoryFileDriver(file));
  const node = await graph.add({ driver: 'qcow2', 'node-name': 'img', file: { driver: 'memory-file' }, 'l2-cache-size': 8192 });
  const model = Buffer.alloc(size);
  const write = async (off: number, len: number, seed: number): Promise<void> => {
    const data = patternBuffer(len, seed);
    await node.write(off, data);
    data.copy(model, off);
  };

  await write(0, 300 * KiB, 1);
  await node.flush();

  // A sync that fails: the flush fails, and succeeds once syncs work again.
  await write(MiB, 100 * KiB, 2);
  file.failSyncs = true;
  await assert.rejects(node.flush(), isEio);
  file.failSyncs = false;
  await node.flush();

  // A data write that fails: the request fails, the clusters it took are given back.
  file.failWrites = true;
  await assert.rejects(node.write(3 * MiB, patternBuffer(64 * KiB, 3)), isEio);
  file.failWrites = false;
  await write(4 * MiB, 10 * KiB, 4);

  // Metadata write-back that fails (in a flush and in evictions).
  await node.discard(0, 64 * KiB);
  model.fill(0, 0, 64 * KiB);
  file.failWrites = true;
  await assert.rejects(node.flush(), isEio);
  await assert.rejects(node.write(6 * MiB, patternBuffer(4 * KiB, 5)), isEio);
  file.failWrites = false;
  for (let i = 0; i < 40; i++) await write(2 * MiB + i * 64 * KiB, 5000, 10 + i);
  await node.flush();

  assertSameBytes(await readAll(node), model, 'content after the errors');
  await graph.closeAll();
  const path = dir.file('img.qcow2');
  writeFileSync(path, file.contents());
  await assertQemuCheckClean(path);
  writeFileSync(dir.file('expected.raw'), model);
  await qemuImg('compare', '-f', 'qcow2', '-F', 'raw', path, dir.file('expected.raw'));
  dir.cleanup();
});

test('make-empty failing half-way stops writes; reopening repairs the image', async () => {
  const dir = tempDir();
  const size = 4 * MiB;
  const file = new MemoryFile(buildImage({ size }));
  const graph = createGraph();
  graph.register(memoryFileDriver(file));
  const node = await graph.add({ driver: 'qcow2', 'node-name': 'img', file: { driver: 'memory-file' } });
  await node.write(0, patternBuffer(MiB, 1));
  await node.flush();
  file.failWritesAfter = 1; // the dirty bit goes out, the new tables do not
  await assert.rejects(node.makeEmpty(), isEio);
  file.failWritesAfter = -1;
  file.failWrites = false;
  await assert.rejects(node.write(2 * MiB, Buffer.alloc(512)), /writes are refused because emptying the image failed half-way/);
  await graph.closeAll().catch(() => undefined);
  const path = dir.file('img.qcow2');
  writeFileSync(path, file.contents());
  const again = createGraph();
  const reopened = await again.add({ driver: 'qcow2', 'node-name': 'img', file: { driver: 'file', filename: path } });
  await reopened.write(2 * MiB, Buffer.alloc(4096, 7));
  await again.closeAll();
  await assertQemuCheckClean(path);
  dir.cleanup();
});
