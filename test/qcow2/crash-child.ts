/**
 * Child process of the crash test: runs batches of concurrent requests on a
 * qcow2 image, flushes after each batch and prints `flushed N` once flush N
 * has completed. The parent SIGKILLs it at some point.
 * Usage: node crash-child.js IMAGE SEED SIZE
 */
import { Req } from '../../src/block/node.js';
import { createGraph } from '../../src/drivers/index.js';
import { patternBuffer } from '../helpers/env.js';
import { batchOps } from './crash-ops.js';

const [image, seedText, sizeText] = process.argv.slice(2);
const seed = Number(seedText);
const size = Number(sizeText);
const graph = createGraph();
const node = await graph.add({ driver: 'qcow2', 'node-name': 'img', file: { driver: 'file', filename: image! } });
for (let batch = 0; batch < 1000; batch++) {
  const ops = batchOps(seed, batch, size);
  const pending: Array<Promise<void>> = [];
  for (const op of ops) {
    if (op.kind === 'empty') await node.makeEmpty();
    else if (op.kind === 'write') pending.push(node.write(op.off, patternBuffer(op.len, op.seed), op.fua ? Req.FUA : 0));
    else if (op.kind === 'zero') pending.push(node.writeZeroes(op.off, op.len, op.unmap ? Req.MAY_UNMAP : 0));
    else pending.push(node.discard(op.off, op.len));
  }
  await Promise.all(pending);
  await node.flush();
  process.stdout.write(`flushed ${batch}\n`);
}
await graph.closeAll();
