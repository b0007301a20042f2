/**
 * Property: random sequences of write / write-zeroes (with and without
 * unmap) / discard / make-empty / flush / reopen on an overlay over a backing
 * image read back exactly like an in-memory byte model, and leave an image
 * that qemu-img check finds clean and qemu-img compare finds equal.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import fc from 'fast-check';
import type { BlockGraph } from '../../src/block/graph.js';
import { Req, type BlockNode } from '../../src/block/node.js';
import { createGraph } from '../../src/drivers/index.js';
import { createQcow2 } from '../../src/drivers/qcow2/index.js';
import { patternBuffer, tempDir } from '../helpers/env.js';
import { assertQemuCheckClean, assertSameBytes, fileNode, qemuImg, readAll } from './helpers.js';

type Op =
  | { kind: 'write'; off: number; len: number; seed: number }
  | { kind: 'zero'; off: number; len: number; unmap: boolean }
  | { kind: 'discard'; off: number; len: number }
  | { kind: 'empty' }
  | { kind: 'flush' }
  | { kind: 'reopen' };

const SIZE = 1536 * 1024;
const BACKING_SIZE = 1024 * 1024 + 4096;

function rangeArb(): fc.Arbitrary<{ off: number; len: number }> {
  return fc.tuple(fc.integer({ min: 0, max: SIZE - 1 }), fc.integer({ min: 1, max: 200 * 1024 }))
    .map(([off, len]) => ({ off, len: Math.min(len, SIZE - off) }));
}

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.tuple(rangeArb(), fc.integer()).map(([r, seed]) => ({ kind: 'write' as const, ...r, seed })) },
  { weight: 2, arbitrary: fc.tuple(rangeArb(), fc.boolean()).map(([r, unmap]) => ({ kind: 'zero' as const, ...r, unmap })) },
  { weight: 2, arbitrary: rangeArb().map((r) => ({ kind: 'discard' as const, ...r })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'empty' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'reopen' as const }) },
);

test('random operation sequences on an overlay (v3 and v2) match a byte model and qemu-img', async () => {
  const dir = tempDir();
  const backingData = patternBuffer(BACKING_SIZE, 4242);
  const basePath = dir.file('base.raw');
  writeFileSync(basePath, backingData);
  const expected = dir.file('expected.raw');
  let runNo = 0;

  await fc.assert(
    fc.asyncProperty(fc.constantFrom(512, 4096, 65536), fc.constantFrom(3, 3, 2), fc.array(opArb, { minLength: 1, maxLength: 14 }), async (cs, version, ops) => {
      const top = dir.file(`top${runNo++}.qcow2`);
      if (version === 3) {
        await createQcow2(top, { size: SIZE, clusterSize: cs, backingFile: 'base.raw', backingFormat: 'raw' });
      } else {
        await qemuImg('create', '-q', '-f', 'qcow2', '-o', `compat=0.10,cluster_size=${cs}`, '-b', 'base.raw', '-F', 'raw', top, String(SIZE));
      }
      const model = Buffer.alloc(SIZE);
      backingData.copy(model);
      const open = async (): Promise<{ graph: BlockGraph; node: BlockNode }> => {
        const graph = createGraph();
        const node = await graph.add({ driver: 'qcow2', 'node-name': 'top', file: fileNode(top) });
        return { graph, node };
      };
      let { graph, node } = await open();
      try {
        for (const op of ops) {
          switch (op.kind) {
            case 'write': {
              const data = patternBuffer(op.len, op.seed);
              await node.write(op.off, data);
              data.copy(model, op.off);
              break;
            }
            case 'zero':
              await node.writeZeroes(op.off, op.len, op.unmap ? Req.MAY_UNMAP : 0);
              model.fill(0, op.off, op.off + op.len);
              break;
            case 'discard': {
              await node.discard(op.off, op.len);
              const end = op.off + op.len;
              const first = Math.ceil(op.off / cs);
              const last = end === SIZE ? Math.ceil(end / cs) : Math.floor(end / cs);
              for (let c = first; c < last; c++) {
                const from = c * cs;
                const to = Math.min((c + 1) * cs, SIZE);
                // v3 leaves zero clusters; v2 has none, so the backing shows through again.
                model.fill(0, from, to);
                if (version === 2 && from < BACKING_SIZE) backingData.copy(model, from, from, Math.min(to, BACKING_SIZE));
              }
              break;
            }
            case 'empty':
              await node.makeEmpty();
              model.fill(0);
              backingData.copy(model);
              break;
            case 'flush':
              await node.flush();
              break;
            case 'reopen':
              await graph.closeAll();
              ({ graph, node } = await open());
              break;
          }
        }
        assertSameBytes(await readAll(node), model, `after ${JSON.stringify(ops)}`);
      } finally {
        await graph.closeAll();
      }
      await assertQemuCheckClean(top);
      writeFileSync(expected, model);
      await qemuImg('compare', '-f', 'qcow2', '-F', 'raw', top, expected);
      assert.ok(true);
    }),
    { numRuns: Number(process.env.QCOW2_PROPERTY_RUNS ?? 30) },
  );
  dir.cleanup();
});
