/**
 * colo-blk and QEMU take turns writing the same image (each session closes
 * before the other opens): each side must handle the structures the other
 * left (refblocks, grown reftables, zero clusters, freed space), and after
 * every turn qemu-img check is clean and the content matches the model.
 */
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { Req } from '../../src/block/node.js';
import { createQcow2 } from '../../src/drivers/qcow2/index.js';
import { patternBuffer, tempDir } from '../helpers/env.js';
import { assertQemuCheckClean, assertSameBytes, openImage, qemuImg, qemuIo, readAll } from './helpers.js';

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

for (const [cs, bits] of [[65536, 16], [512, 16], [4096, 4]] as const) {
  test(`colo-blk and qemu-io alternate on one image (${cs}-byte clusters, ${bits}-bit refcounts)`, async () => {
    const dir = tempDir();
    const path = dir.file('shared.qcow2');
    const size = 6 * 1024 * 1024;
    await createQcow2(path, { size, clusterSize: cs, refcountBits: bits });
    const model = Buffer.alloc(size);
    const rand = rng(cs + bits);
    const range = (): [number, number] => {
      const off = Math.floor(rand() * size);
      return [off, Math.max(1, Math.min(size - off, Math.floor(rand() * 300 * 1024)))];
    };
    for (let turn = 0; turn < 6; turn++) {
      // colo-blk's turn.
      const { graph, node } = await openImage(path);
      for (let i = 0; i < 12; i++) {
        const [off, len] = range();
        const r = rand();
        if (r < 0.6) {
          const data = patternBuffer(len, turn * 100 + i);
          await node.write(off, data);
          data.copy(model, off);
        } else if (r < 0.8) {
          await node.writeZeroes(off, len, rand() < 0.5 ? Req.MAY_UNMAP : 0);
          model.fill(0, off, off + len);
        } else {
          await node.discard(off, len);
          const first = Math.ceil(off / cs);
          const last = off + len === size ? Math.ceil((off + len) / cs) : Math.floor((off + len) / cs);
          for (let c = first; c < last; c++) model.fill(0, c * cs, (c + 1) * cs);
        }
      }
      assertSameBytes(await readAll(node), model, `turn ${turn}, colo-blk`);
      await graph.closeAll();
      await assertQemuCheckClean(path);

      // QEMU's turn: patterned writes, zeroes (with and without unmap), discards.
      const cmds: string[] = [];
      for (let i = 0; i < 12; i++) {
        const [off, len] = range();
        const r = rand();
        if (r < 0.6) {
          const pattern = 1 + ((turn * 13 + i) % 250);
          cmds.push(`write -P ${pattern} ${off} ${len}`);
          model.fill(pattern, off, off + len);
        } else if (r < 0.8) {
          cmds.push(`write -z ${rand() < 0.5 ? '-u ' : ''}${off} ${len}`);
          model.fill(0, off, off + len);
        } else {
          // Aligned to whole clusters so that the model is exact.
          const first = Math.ceil(off / cs);
          const last = Math.floor((off + len) / cs);
          if (last > first) {
            cmds.push(`discard ${first * cs} ${(last - first) * cs}`);
            model.fill(0, first * cs, last * cs);
          }
        }
      }
      await qemuIo(path, cmds);
      await assertQemuCheckClean(path);
    }
    const { graph, node } = await openImage(path, { 'read-only': true });
    assertSameBytes(await readAll(node), model, 'final content through colo-blk');
    await graph.closeAll();
    writeFileSync(dir.file('expected.raw'), model);
    await qemuImg('compare', '-f', 'qcow2', '-F', 'raw', path, dir.file('expected.raw'));
    dir.cleanup();
  });
}
