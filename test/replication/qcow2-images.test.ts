/**
 * Replication over real qcow2 images, checked with QEMU's own tools: what
 * copy-before-write and the secondary's writes allocate (qemu-img map), that
 * a checkpoint leaves both overlays empty, that every image stays consistent
 * (qemu-img check), and that the failed-over disk holds exactly the view
 * (qemu-img compare against a raw image of the expected bytes).
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { builtinDrivers } from '../../src/drivers/index.js';
import type { BlockNode } from '../../src/block/node.js';
import { requireTool, run, runOk } from '../helpers/env.js';
import { KiB, MiB, fill, secondaryFixture } from './fixtures.js';

const hasQcow2 = builtinDrivers.some((d) => d.name === 'qcow2');

interface MapEntry { start: number; length: number; data: boolean; zero: boolean }

/** The image file of a qcow2 node. */
function imageOf(node: BlockNode): string {
  return node.file!.filename;
}

async function dataExtents(node: BlockNode): Promise<Array<[number, number]>> {
  await node.flush();
  const r = await runOk('qemu-img', ['map', '-U', '--output=json', '-f', 'qcow2', imageOf(node)]);
  return (JSON.parse(r.stdout) as MapEntry[]).filter((e) => e.data).map((e) => [e.start, e.start + e.length]);
}

async function checkClean(path: string): Promise<void> {
  const r = await run('qemu-img', ['check', '-U', '-f', 'qcow2', path]);
  assert.equal(r.status, 0, `qemu-img check ${path}: ${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /No errors were found on the image/);
}

test('qcow2 images: allocation, checkpoint, failover, all checked with qemu-img', { skip: !hasQcow2 && 'no qcow2 driver' }, async () => {
  requireTool('qemu-img');
  const f = await secondaryFixture('qcow2', { size: 16 * MiB });
  const images = { local: imageOf(f.local), active: imageOf(f.active), hidden: imageOf(f.hidden) };
  try {
    await f.repl.start('secondary');
    await f.localBB.write(MiB + 512, fill(512, 0x22));
    assert.deepEqual(await dataExtents(f.hidden), [[MiB, MiB + 64 * KiB]], 'one 64 KiB cluster copied, as QEMU');
    await f.top.write(4 * MiB, fill(MiB, 0x33));
    assert.deepEqual(await dataExtents(f.active), [[4 * MiB, 5 * MiB]]);

    await f.repl.checkpoint();
    assert.deepEqual(await dataExtents(f.active), [], 'checkpoint emptied active');
    assert.deepEqual(await dataExtents(f.hidden), [], 'checkpoint emptied hidden');
    for (const p of Object.values(images)) await checkClean(p);

    // After the checkpoint: primary writes (rolled back by the failover) and SVM writes (kept).
    await f.localBB.write(8 * MiB, fill(2 * MiB, 0x44));
    await f.top.write(0, fill(64 * KiB, 0x55));
    await f.top.write(8 * MiB + 4096, fill(4096, 0x66));
    await f.repl.stop(true);
    await f.repl.failoverSettled();
    assert.equal(f.repl.stage, 'done');

    // Every image closed, then judged by QEMU's tools.
    f.top.detach();
    f.localBB.detach();
    await f.graph.closeAll();
    const expected = Buffer.alloc(16 * MiB, 0x11);
    expected.fill(0x22, MiB + 512, MiB + 1024);
    expected.fill(0x55, 0, 64 * KiB);
    expected.fill(0x66, 8 * MiB + 4096, 8 * MiB + 8192);
    const expectedPath = `${images.local}.expected.raw`;
    writeFileSync(expectedPath, expected);
    const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', images.local, expectedPath]);
    assert.equal(cmp.status, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
    for (const p of Object.values(images)) await checkClean(p);
  } finally {
    await f.cleanup();
  }
});
