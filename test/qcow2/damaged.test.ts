/**
 * Damaged and unsupported images: each gives a clear error for the open or
 * for the request that touches the damage (EIO), never a crash, a hang or a
 * silent wrong read. Writes that would hit metadata mark the image corrupt.
 */
import assert from 'node:assert/strict';
import { copyFileSync, truncateSync } from 'node:fs';
import { test } from 'node:test';
import { BlockError } from '../../src/block/errors.js';
import { checkQcow2, createQcow2 } from '../../src/drivers/qcow2/index.js';
import { tempDir } from '../helpers/env.js';
import { KiB, MiB, openImage, qemuImg, qemuIo, readAll } from './helpers.js';
import { hostOffset, l2EntryPos, layout, readU64, writeBytes, writeU32, writeU64 } from './surgery.js';

async function goodImage(path: string): Promise<void> {
  await createQcow2(path, { size: 8 * MiB });
  const { graph, node } = await openImage(path);
  await node.write(0, Buffer.alloc(256 * KiB, 0x7e));
  await node.write(2 * MiB, Buffer.alloc(64 * KiB, 0x7f));
  await graph.closeAll();
}

function expectError(code: string, pattern: RegExp): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(BlockError.is(err), `a BlockError, got ${String(err)}`);
    assert.equal(err.code, code, `code of: ${err.message}`);
    assert.match(err.message, pattern);
    return true;
  };
}

const OPEN_REFUSALS: Array<[string, (p: string) => void, string, RegExp, boolean?]> = [
  ['unknown incompatible feature bit', (p) => writeU64(p, 72, 1n << 5n), 'ENOTSUP', /Unsupported qcow2 feature.*Unknown incompatible feature: 20/],
  ['corrupt bit (read-write)', (p) => writeU64(p, 72, 2n), 'EACCES', /corrupt; cannot be opened read\/write/],
  ['encryption', (p) => writeU32(p, 32, 1), 'ENOTSUP', /encryption is not supported/],
  ['external data file', (p) => writeU64(p, 72, 4n), 'ENOTSUP', /external data file/],
  ['extended L2 entries', (p) => writeU64(p, 72, 16n), 'ENOTSUP', /extended L2/],
  ['zstd compression', (p) => { writeU64(p, 72, 8n); writeBytes(p, 104, Buffer.from([1])); }, 'ENOTSUP', /zstd/],
  ['truncated header', (p) => truncateSync(p, 50), 'EINVAL', /header is truncated/],
  ['unknown version', (p) => writeU32(p, 4, 4), 'ENOTSUP', /Unsupported qcow2 version 4/],
  ['cluster size out of range', (p) => writeU32(p, 20, 30), 'EINVAL', /Unsupported cluster size: 2\^30/],
  ['L1 table past the end of the file', (p) => writeU64(p, 40, 1n << 40n), 'EINVAL', /L1 table .* past the end of the image file/],
  ['reftable past the end of the file', (p) => writeU64(p, 48, 1n << 40n), 'EINVAL', /Reference count table .* past the end of the image file/],
  ['L1 table overlapping the reftable', (p) => writeU64(p, 40, BigInt(layout(p).reftableOffset)), 'EINVAL', /overlap/],
  ['L1 table too small', (p) => writeU32(p, 36, 0), 'EINVAL', /L1 table is too small/],
  ['backing name past the header cluster', (p) => { writeU64(p, 8, 65000n); writeU32(p, 16, 1000); }, 'EINVAL', /backing file offset|Backing file name/i],
  ['header extension running past the header', (p) => { writeU32(p, 0x70 + 4, 100000); }, 'EINVAL', /header extension/],
  ['not a qcow2 file', (p) => writeU32(p, 0, 0x12345678), 'EINVAL', /not in qcow2 format/],
];

for (const [what, inject, code, pattern] of OPEN_REFUSALS) {
  test(`refused at open: ${what}`, async () => {
    const dir = tempDir();
    const path = dir.file('bad.qcow2');
    await goodImage(path);
    inject(path);
    await assert.rejects(openImage(path), expectError(code, pattern));
    dir.cleanup();
  });
}

test('a corrupt-marked image still opens read-only; a clean repair clears the mark', async () => {
  const dir = tempDir();
  const path = dir.file('c.qcow2');
  await goodImage(path);
  writeU64(path, 72, 2n);
  const { graph, node } = await openImage(path, { 'read-only': true });
  assert.ok((await readAll(node, 0, 64 * KiB)).every((b) => b === 0x7e));
  await graph.closeAll();
  const fixed = await checkQcow2(path, { repair: 'leaks' });
  assert.equal(fixed.corruptions, 0);
  assert.equal(readU64(path, 72) & 2n, 0n, 'corrupt bit cleared');
  const rw = await openImage(path);
  await rw.node.write(0, Buffer.alloc(512, 1));
  await rw.graph.closeAll();
  dir.cleanup();
});

test('damaged L1/L2 entries fail the request touching them with EIO, other requests keep working', async () => {
  const dir = tempDir();
  const cases: Array<[string, (p: string) => void, number, RegExp]> = [
    ['L2 entry past the end of the file', (p) => writeU64(p, l2EntryPos(p, 0).l2Pos, (1n << 63n) | (1n << 36n)), 0, /past the end of the image file/],
    ['L2 entry pointing at the reftable', (p) => writeU64(p, l2EntryPos(p, 0).l2Pos, (1n << 63n) | BigInt(layout(p).reftableOffset)), 0, /overlaps the refcount table/],
    ['L2 entry with reserved bits', (p) => {
      const pos = l2EntryPos(p, 0).l2Pos;
      writeU64(p, pos, readU64(p, pos) | 0x100n);
    }, 0, /reserved bits/],
    ['unaligned L2 entry', (p) => writeU64(p, l2EntryPos(p, 0).l2Pos, (1n << 63n) | BigInt(hostOffset(p, 0) + 4096)), 0, /unaligned/],
    ['L1 entry pointing at the reftable', (p) => writeU64(p, l2EntryPos(p, 0).l1Pos, (1n << 63n) | BigInt(layout(p).reftableOffset)), 0, /overlaps the refcount table/],
    ['L1 entry past the end of the file', (p) => writeU64(p, l2EntryPos(p, 0).l1Pos, (1n << 63n) | (1n << 36n)), 0, /past the end of the image file/],
    ['L1 entry with reserved bits', (p) => {
      const pos = l2EntryPos(p, 0).l1Pos;
      writeU64(p, pos, readU64(p, pos) | 0x1n);
    }, 0, /reserved bits/],
  ];
  for (const [what, inject, guest, pattern] of cases) {
    const path = dir.file('bad.qcow2');
    await goodImage(path);
    inject(path);
    const { graph, node } = await openImage(path, { 'read-only': true });
    await assert.rejects(node.read(guest, Buffer.alloc(4096)), expectError('EIO', pattern), what);
    await graph.closeAll();

    const rw = await openImage(path);
    await assert.rejects(rw.node.write(guest, Buffer.alloc(4096, 1)), expectError('EIO', /corrupt/), `${what}: write`);
    // Writes are refused from now on, reads elsewhere still work.
    await assert.rejects(rw.node.write(4 * MiB, Buffer.alloc(512)), expectError('EIO', /corrupt/));
    if (!what.startsWith('L1')) assert.ok((await readAll(rw.node, 2 * MiB, 64 * KiB)).every((b) => b === 0x7f), `${what}: other data readable`);
    await rw.graph.closeAll();
    assert.equal(readU64(path, 72) & 2n, 2n, `${what}: the corrupt bit is set on disk`);
    const r = await qemuImg('info', '--output=json', path);
    assert.match(r.stdout, /"corrupt": true/);
  }
  dir.cleanup();
});

test('a damaged compressed cluster gives EIO', async () => {
  const dir = tempDir();
  const src = dir.file('src.qcow2');
  const comp = dir.file('comp.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', src, '1M');
  await qemuIo(src, ['write -P 0x5a 0 1M']);
  await qemuImg('convert', '-c', '-O', 'qcow2', src, comp);
  const entry = readU64(comp, l2EntryPos(comp, 0).l2Pos);
  const offset = Number(entry & ((1n << 54n) - 1n));
  writeBytes(comp, offset, Buffer.alloc(64, 0xff));
  const { graph, node } = await openImage(comp, { 'read-only': true });
  await assert.rejects(node.read(0, Buffer.alloc(4096)), expectError('EIO', /decompress/));
  assert.ok((await readAll(node, 65536, 4096)).every((b) => b === 0x5a), 'other clusters still read');
  await graph.closeAll();
  dir.cleanup();
});

test('a refblock pointer past the end of the file fails allocating writes only', async () => {
  const dir = tempDir();
  const path = dir.file('bad.qcow2');
  await goodImage(path);
  writeU64(path, layout(path).reftableOffset, 1n << 36n);
  const copy = dir.file('copy.qcow2');
  copyFileSync(path, copy);
  const { graph, node } = await openImage(path);
  assert.ok((await readAll(node, 0, 64 * KiB)).every((b) => b === 0x7e), 'reads are unaffected');
  await node.write(0, Buffer.alloc(512, 1));
  await assert.rejects(node.write(6 * MiB, Buffer.alloc(512, 1)), expectError('EIO', /refblock offset .* past the end/));
  await graph.closeAll();
  dir.cleanup();
});
