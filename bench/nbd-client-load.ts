/**
 * Load generator for bench/nbd-client.ts: opens an image through colo-blk's
 * block layer (the nbd driver under raw, as the replication path uses it)
 * and issues `count` requests of `size` bytes at consecutive offsets with
 * `depth` in flight, like `qemu-img bench -c COUNT -d DEPTH -s SIZE`.
 * Prints one JSON line: {"seconds": S, "count": N}.
 *
 * usage: node dist/bench/nbd-client-load.js URI COUNT DEPTH SIZE read|write
 */
import { fileURLToPath } from 'node:url';
import { createGraph } from '../src/drivers/index.js';

export async function clientLoad(uri: string, count: number, depth: number, size: number, write: boolean): Promise<number> {
  const graph = createGraph();
  const node = await graph.open({ driver: 'raw', file: { driver: 'nbd', filename: uri } });
  const buf = Buffer.alloc(size, 0x5a);
  const bufs = Array.from({ length: depth }, () => Buffer.alloc(size));
  const span = Math.floor(node.size / size) * size;
  let next = 0;
  const start = process.hrtime.bigint();
  const worker = async (slot: number): Promise<void> => {
    while (next < count) {
      const offset = (next++ * size) % span;
      if (write) await node.write(offset, buf);
      else await node.read(offset, bufs[slot]!);
    }
  };
  await Promise.all(Array.from({ length: depth }, (_, i) => worker(i)));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await graph.closeAll();
  return seconds;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [uri, count, depth, size, mode] = process.argv.slice(2);
  clientLoad(uri!, Number(count), Number(depth), Number(size), mode === 'write').then(
    (seconds) => process.stdout.write(`${JSON.stringify({ seconds, count: Number(count) })}\n`),
    (err: unknown) => {
      process.stderr.write(`nbd-client-load: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
