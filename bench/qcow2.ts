/**
 * qcow2 driver benchmark against `qemu-img bench`, measured in the same run
 * on the same kind of image (identical layout: both created fresh with the
 * default 64 KiB clusters and 16-bit refcounts), with the same request size,
 * step and queue depth.
 *
 * Cache mode: qemu-img bench runs with `-t writeback` (page cache, no flush
 * per request, no flush inside the timed loop); our side does the same: no
 * FUA, no flush until the timed loop is over. Write buffers are zeroes,
 * qemu-img bench's default pattern (neither side detects zeroes).
 *
 * Run alone: `node dist/bench/qcow2.js [--quick]` (it sets UV_THREADPOOL_SIZE to the
 * number of CPUs, at least 2, unless the environment already does).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import type { BlockNode } from '../src/block/node.js';
import { createGraph } from '../src/drivers/index.js';
import { createQcow2 } from '../src/drivers/qcow2/index.js';

export interface BenchRow {
  name: string;
  unit: 'IOPS' | 'MiB/s' | 'ms';
  ours: number;
  peer: number | null;
  /** ours / peer, higher is better (for ms rows: peer / ours). */
  ratio: number | null;
  oursCommand: string;
  peerCommand: string | null;
}

export interface Qcow2BenchOptions {
  /** Folder for the images; /dev/shm by default on Linux. */
  dir?: string;
  depth?: number;
  smallCount?: number;
  largeCount?: number;
  /** Rounds per row; each side keeps its best. */
  rounds?: number;
}

const KiB = 1024;
const MiB = 1024 * KiB;

function qemuBench(args: string[]): number {
  const r = spawnSync('qemu-img', ['bench', ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`qemu-img bench ${args.join(' ')} failed: ${r.stderr}`);
  const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout);
  if (!m) throw new Error(`unexpected qemu-img bench output: ${r.stdout}`);
  return Number(m[1]);
}

function qemuCreate(path: string, size: number): void {
  const r = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(size)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`qemu-img create failed: ${r.stderr}`);
}

/** Keeps `depth` requests in flight until `count` are done, like qemu-img bench; returns seconds. */
async function runDepth(count: number, depth: number, issue: (i: number) => Promise<void>): Promise<number> {
  const start = performance.now();
  await new Promise<void>((resolve, reject) => {
    let next = 0;
    let done = 0;
    const kick = (): void => {
      while (next < count && next - done < depth) {
        const i = next++;
        issue(i).then(() => {
          done++;
          if (done === count) resolve();
          else kick();
        }, reject);
      }
    };
    kick();
  });
  return (performance.now() - start) / 1000;
}

async function openNode(path: string): Promise<{ node: BlockNode; close(): Promise<void> }> {
  const graph = createGraph();
  const node = await graph.add({ driver: 'qcow2', 'node-name': 'bench', file: { driver: 'file', filename: path } });
  return { node, close: () => graph.closeAll() };
}

export async function runQcow2Bench(opts: Qcow2BenchOptions = {}): Promise<BenchRow[]> {
  const base = opts.dir ?? (process.platform === 'linux' ? '/dev/shm' : tmpdir());
  const dir = mkdtempSync(join(base, 'colo-blk-bench-'));
  const depth = opts.depth ?? 16;
  const small = opts.smallCount ?? 20000;
  const large = opts.largeCount ?? 1000;
  const rounds = opts.rounds ?? 3;
  const rows: BenchRow[] = [];
  const row = (name: string, unit: BenchRow['unit'], ours: number, peer: number | null, oursCommand: string, peerCommand: string | null): void => {
    const ratio = peer === null ? null : unit === 'ms' ? peer / ours : ours / peer;
    rows.push({ name, unit, ours, peer, ratio, oursCommand, peerCommand });
  };
  try {
    // 4 KiB writes at a 64 KiB step: one cluster allocation per write, then
    // the same into the allocated image. Both sides alternate, each on fresh
    // images, and keep their best round (the machine may be shared).
    const smallSize = small * 64 * KiB;
    const buf4k = Buffer.alloc(4096);
    const qArgs = (img: string): string[] => ['-w', '-c', String(small), '-d', String(depth), '-s', '4096', '-S', '65536', '-t', 'writeback', '-f', 'qcow2', img];
    const best = { qFresh: Infinity, qAlloc: Infinity, cFresh: Infinity, cAlloc: Infinity, qWrite: Infinity, qRead: Infinity, cWrite: Infinity, cRead: Infinity };
    for (let round = 0; round < rounds; round++) {
      const q = join(dir, `q-small-${round}.qcow2`);
      qemuCreate(q, smallSize);
      best.qFresh = Math.min(best.qFresh, qemuBench(qArgs(q)));
      best.qAlloc = Math.min(best.qAlloc, qemuBench(qArgs(q)));
      rmSync(q);
      const c = join(dir, `c-small-${round}.qcow2`);
      await createQcow2(c, { size: smallSize });
      const s = await openNode(c);
      best.cFresh = Math.min(best.cFresh, await runDepth(small, depth, (i) => s.node.write(i * 64 * KiB, buf4k)));
      await s.node.flush();
      best.cAlloc = Math.min(best.cAlloc, await runDepth(small, depth, (i) => s.node.write(i * 64 * KiB, buf4k)));
      await s.close();
      rmSync(c);
    }
    const oursSmall = `colo-blk qcow2 node: ${small} writes of 4096 bytes, step 65536, depth ${depth}, no flush`;
    const peerSmall = `qemu-img bench ${qArgs('IMAGE').join(' ')}`;
    row('4 KiB writes, 64 KiB step, fresh image (allocating)', 'IOPS', small / best.cFresh, small / best.qFresh, oursSmall, peerSmall);
    row('4 KiB writes, 64 KiB step, allocated image', 'IOPS', small / best.cAlloc, small / best.qAlloc, oursSmall, peerSmall);

    // 1 MiB sequential writes into a fresh image, then 1 MiB sequential reads of it.
    const largeSize = large * MiB;
    const bufM = Buffer.alloc(MiB);
    const readBufs = Array.from({ length: depth }, () => Buffer.alloc(MiB));
    const qwArgs = (img: string): string[] => ['-w', '-c', String(large), '-d', String(depth), '-s', '1M', '-t', 'writeback', '-f', 'qcow2', img];
    const qrArgs = (img: string): string[] => ['-c', String(large), '-d', String(depth), '-s', '1M', '-t', 'writeback', '-f', 'qcow2', img];
    for (let round = 0; round < rounds; round++) {
      const q = join(dir, `q-large-${round}.qcow2`);
      qemuCreate(q, largeSize);
      best.qWrite = Math.min(best.qWrite, qemuBench(qwArgs(q)));
      best.qRead = Math.min(best.qRead, qemuBench(qrArgs(q)));
      rmSync(q);
      const c = join(dir, `c-large-${round}.qcow2`);
      await createQcow2(c, { size: largeSize });
      const l = await openNode(c);
      best.cWrite = Math.min(best.cWrite, await runDepth(large, depth, (i) => l.node.write(i * MiB, bufM)));
      await l.node.flush();
      best.cRead = Math.min(best.cRead, await runDepth(large, depth, (i) => l.node.read(i * MiB, readBufs[i % depth]!)));
      await l.close();
      rmSync(c);
    }
    row('1 MiB sequential writes, fresh image', 'MiB/s', large / best.cWrite, large / best.qWrite,
      `colo-blk qcow2 node: ${large} writes of 1 MiB, sequential, depth ${depth}, no flush`, `qemu-img bench ${qwArgs('IMAGE').join(' ')}`);
    row('1 MiB sequential reads', 'MiB/s', large / best.cRead, large / best.qRead,
      `colo-blk qcow2 node: ${large} reads of 1 MiB, sequential, depth ${depth}`, `qemu-img bench ${qrArgs('IMAGE').join(' ')}`);

    // A guest that flushes after every write (queue depth 1): the metadata
    // write-back order costs two syncs per allocation, as in QEMU.
    const syncCount = Math.max(1000, Math.floor(small / 4));
    const fArgs = (img: string): string[] => ['-w', '-c', String(syncCount), '-d', '1', '-s', '4096', '-S', '65536', '--flush-interval=1', '-t', 'writeback', '-f', 'qcow2', img];
    const bestSync = { qFresh: Infinity, qAlloc: Infinity, cFresh: Infinity, cAlloc: Infinity };
    for (let round = 0; round < rounds; round++) {
      const q = join(dir, `q-sync-${round}.qcow2`);
      qemuCreate(q, syncCount * 64 * KiB);
      bestSync.qFresh = Math.min(bestSync.qFresh, qemuBench(fArgs(q)));
      bestSync.qAlloc = Math.min(bestSync.qAlloc, qemuBench(fArgs(q)));
      rmSync(q);
      const c = join(dir, `c-sync-${round}.qcow2`);
      await createQcow2(c, { size: syncCount * 64 * KiB });
      const s = await openNode(c);
      const writeFlush = async (i: number): Promise<void> => {
        await s.node.write(i * 64 * KiB, buf4k);
        await s.node.flush();
      };
      bestSync.cFresh = Math.min(bestSync.cFresh, await runDepth(syncCount, 1, writeFlush));
      bestSync.cAlloc = Math.min(bestSync.cAlloc, await runDepth(syncCount, 1, writeFlush));
      await s.close();
      rmSync(c);
    }
    const oursSync = `colo-blk qcow2 node: ${syncCount} x (write 4096 bytes, flush), step 65536, depth 1`;
    const peerSync = `qemu-img bench ${fArgs('IMAGE').join(' ')}`;
    row('4 KiB write + flush each, depth 1, fresh image', 'IOPS', syncCount / bestSync.cFresh, syncCount / bestSync.qFresh, oursSync, peerSync);
    row('4 KiB write + flush each, depth 1, allocated image', 'IOPS', syncCount / bestSync.cAlloc, syncCount / bestSync.qAlloc, oursSync, peerSync);

    // make-empty with 64 MiB allocated (4 KiB clusters scattered over the disk and 64 KiB runs).
    const e = join(dir, 'empty.qcow2');
    await createQcow2(e, { size: 4 * 1024 * MiB });
    const en = await openNode(e);
    for (let i = 0; i < 1024; i++) await en.node.write(i * 4 * MiB, Buffer.alloc(64 * KiB, 1));
    await en.node.flush();
    const times: number[] = [];
    for (let round = 0; round < 5; round++) {
      await runDepth(1024, depth, (i) => en.node.write(i * 4 * MiB, bufM.subarray(0, 64 * KiB)));
      const t0 = performance.now();
      await en.node.makeEmpty();
      times.push(performance.now() - t0);
    }
    await en.close();
    times.sort((a, b) => a - b);
    row('make-empty with 64 MiB allocated (median of 5)', 'ms', times[2]!, null,
      'colo-blk qcow2 node: 1024 x 64 KiB written over 4 GiB (unflushed), then makeEmpty()', null);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

export function formatRows(rows: BenchRow[]): string {
  const lines: string[] = [];
  for (const r of rows) {
    const fmt = (v: number): string => (r.unit === 'ms' ? v.toFixed(2) : v >= 1000 ? Math.round(v).toString() : v.toFixed(1));
    const ratio = r.ratio === null ? '' : `  ratio ${r.ratio.toFixed(2)}`;
    lines.push(`${r.name}: colo-blk ${fmt(r.ours)} ${r.unit}${r.peer === null ? '' : ` / qemu-img ${fmt(r.peer)} ${r.unit}`}${ratio}`);
    lines.push(`    colo-blk: ${r.oursCommand}`);
    if (r.peerCommand) lines.push(`    peer:     ${r.peerCommand}`);
  }
  return lines.join('\n');
}

/**
 * libuv's pool (4 threads unless UV_THREADPOOL_SIZE says otherwise) carries
 * every file request; its size is fixed when the pool starts, which an ES
 * module cannot precede, so the standalone run re-executes itself with it set.
 */
function poolSizeForThisHost(): number {
  return Math.min(64, Math.max(2, availableParallelism()));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  if (process.env.UV_THREADPOOL_SIZE === undefined) {
    const r = spawnSync(process.execPath, process.argv.slice(1), {
      stdio: 'inherit',
      env: { ...process.env, UV_THREADPOOL_SIZE: String(poolSizeForThisHost()) },
    });
    process.exit(r.status ?? 1);
  }
  const quick = process.argv.includes('--quick');
  process.stdout.write(`UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE}\n`);
  const rows = await runQcow2Bench(quick ? { smallCount: 5000, largeCount: 300 } : {});
  process.stdout.write(`${formatRows(rows)}\n`);
}
