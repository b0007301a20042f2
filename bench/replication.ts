/**
 * Replication micro-benchmark, with QEMU 7.2 measured in the same run:
 *
 * 1. Copy-before-write write throughput on raw files in tmpfs: our filter vs
 *    QEMU's `copy-before-write` driver under `qemu-img bench`, same files,
 *    same request size, step and queue depth; plus both sides without the
 *    filter, so each side's own overhead shows.
 * 2. Copy-before-write on memory nodes (ours only): first pass (every
 *    cluster copied) and steady state (every cluster already saved: the
 *    bitmap test alone), against the same writes without the filter.
 * 3. Checkpoint time with 0, 1+1 MiB and 64+64 MiB buffered (active+hidden),
 *    as an `xen-colo-do-checkpoint` QMP round trip on both sides: ours over
 *    memory overlays (and qcow2 once that driver is registered), QEMU over
 *    qcow2 overlays in tmpfs (the qemu-colo anchor's layout).
 *
 * Run alone: `node dist/bench/replication.js [--quick]`.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { BlockBackend } from '../src/block/backend.js';
import type { BlockGraph } from '../src/block/graph.js';
import type { BlockNode } from '../src/block/node.js';
import { buildRegistry } from '../src/control/commands/index.js';
import { EventHub } from '../src/control/events.js';
import { QmpClient } from '../src/control/qmp-client.js';
import { QmpServer } from '../src/control/server.js';
import { builtinDrivers, createGraph } from '../src/drivers/index.js';
import { CopyBeforeWriteNode } from '../src/jobs/cbw.js';
import { replicationControl } from '../src/replication/qmp.js';
import type { ReplicationNode } from '../src/replication/node.js';
import { QemuSecondary } from './replication-qemu.js';

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

export interface ReplicationBenchOptions {
  dir?: string;
  quick?: boolean;
}

const KiB = 1024;
const MiB = 1024 * KiB;

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** `depth` writers issuing `count` writes of `buf` at step `buf.length`, sequentially from 0. Seconds. */
async function drive(dev: { write(o: number, b: Buffer): Promise<void> }, count: number, buf: Buffer, depth: number): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: depth }, async () => {
    for (let i = next++; i < count; i = next++) await dev.write(i * buf.length, buf);
  }));
  return (performance.now() - t0) / 1000;
}

function qemuBench(args: string[]): number {
  const out = sh('qemu-img', ['bench', ...args]);
  const m = /Run completed in ([\d.]+) seconds/.exec(out);
  if (!m) throw new Error(`unexpected qemu-img bench output: ${out}`);
  return Number(m[1]);
}

function rate(unit: 'IOPS' | 'MiB/s', count: number, size: number, seconds: number): number {
  return unit === 'IOPS' ? count / seconds : (count * size) / MiB / seconds;
}

// ----------------------------------------------------------- 1. raw files

async function cbwOnFiles(dir: string, quick: boolean): Promise<BenchRow[]> {
  const size = 64 * MiB;
  const src = join(dir, 'src.raw');
  const tgt = join(dir, 'tgt.raw');
  sh('qemu-img', ['create', '-q', '-f', 'raw', src, String(size)]);
  sh('qemu-img', ['create', '-q', '-f', 'raw', tgt, String(size)]);
  const cbwOpts = `driver=copy-before-write,file.driver=raw,file.file.driver=file,file.file.filename=${src},`
    + `target.driver=raw,target.file.driver=file,target.file.filename=${tgt}`;
  const rounds = quick ? 1 : 3;
  const rows: BenchRow[] = [];
  for (const [reqSize, depth, unit] of [[4 * KiB, 1, 'IOPS'], [4 * KiB, 16, 'IOPS'], [64 * KiB, 16, 'MiB/s']] as const) {
    const count = size / reqSize;
    const common = ['-w', '-c', String(count), '-s', String(reqSize), '-S', String(reqSize), '-d', String(depth), '-t', 'writeback'];
    for (const filtered of [true, false]) {
      let peerBest = Infinity;
      let oursBest = Infinity;
      for (let r = 0; r < rounds; r++) {
        peerBest = Math.min(peerBest, filtered
          ? qemuBench([...common, '--image-opts', cbwOpts])
          : qemuBench([...common, '-f', 'raw', src]));
        const g = createGraph();
        const source = await g.add({ driver: 'raw', 'node-name': 's', file: { driver: 'file', filename: src } });
        let top: BlockNode = source;
        if (filtered) {
          const target = await g.add({ driver: 'raw', 'node-name': 't', file: { driver: 'file', filename: tgt } });
          top = new CopyBeforeWriteNode(source, target, 64 * KiB);
        }
        const bb = new BlockBackend('bench', top);
        oursBest = Math.min(oursBest, await drive(bb, count, Buffer.alloc(reqSize), depth));
        bb.detach();
        await g.closeAll();
      }
      const ours = rate(unit, count, reqSize, oursBest);
      const peer = rate(unit, count, reqSize, peerBest);
      const what = filtered ? 'copy-before-write, first pass' : 'no filter';
      rows.push({
        name: `raw files, ${what}, seq ${reqSize / KiB} KiB QD${depth}`,
        unit, ours, peer, ratio: ours / peer,
        oursCommand: `${filtered ? 'CopyBeforeWriteNode(raw src, raw tgt) ' : 'raw src '}via BlockBackend, ${depth} writers`,
        peerCommand: `qemu-img bench ${common.join(' ')} ${filtered ? `--image-opts '${cbwOpts}'` : `-f raw ${src}`}`,
      });
    }
  }
  return rows;
}

// ------------------------------------------------------------- 2. memory

async function cbwOnMemory(quick: boolean): Promise<BenchRow[]> {
  const size = quick ? 64 * MiB : 256 * MiB;
  const rounds = quick ? 1 : 3;
  const rows: BenchRow[] = [];
  for (const [reqSize, depth] of [[4 * KiB, 1], [4 * KiB, 16], [64 * KiB, 16]] as const) {
    const count = size / reqSize;
    const buf = Buffer.alloc(reqSize, 0x5a);
    const g = createGraph();
    const plain = await g.add({ driver: 'memory', 'node-name': 'plain', size });
    const source = await g.add({ driver: 'memory', 'node-name': 'src', size });
    // Every cluster exists before timing, so only the filter's work differs.
    await drive(new BlockBackend('warm', plain), count, buf, depth);
    await drive(new BlockBackend('warm2', source), count, buf, depth);
    let baseline = Infinity;
    let first = Infinity;
    let steady = Infinity;
    for (let r = 0; r < rounds; r++) {
      baseline = Math.min(baseline, await drive(new BlockBackend(`plain${r}`, plain), count, buf, depth));
      const target = await g.add({ driver: 'memory', 'node-name': `tgt${r}`, backing: 'src' });
      const bb = new BlockBackend(`cbw${r}`, new CopyBeforeWriteNode(source, target, 64 * KiB));
      first = Math.min(first, await drive(bb, count, buf, depth));
      steady = Math.min(steady, await drive(bb, count, buf, depth));
      bb.detach();
      await g.closeTree(target);
    }
    await g.closeAll();
    const unit = reqSize >= 64 * KiB ? 'MiB/s' : 'IOPS';
    const base = rate(unit, count, reqSize, baseline);
    for (const [name, seconds] of [['first pass', first], ['steady state (all saved)', steady]] as const) {
      const ours = rate(unit, count, reqSize, seconds);
      rows.push({
        name: `memory, copy-before-write ${name}, seq ${reqSize / KiB} KiB QD${depth}`,
        unit, ours, peer: base, ratio: ours / base,
        oursCommand: `CopyBeforeWriteNode(memory, memory overlay) via BlockBackend, ${depth} writers`,
        peerCommand: 'the same writes to a memory node without the filter (same run)',
      });
    }
  }
  return rows;
}

// --------------------------------------------------------- 3. checkpoints

interface OurSecondary {
  graph: BlockGraph;
  local: BlockBackend;
  top: BlockBackend;
  qmp: QmpClient;
  close(): Promise<void>;
}

async function ourSecondary(dir: string, size: number, kind: 'memory' | 'qcow2'): Promise<OurSecondary> {
  const graph = createGraph();
  const disk = async (name: string, backing?: string): Promise<Record<string, unknown>> => {
    if (kind === 'memory') return backing ? { driver: 'memory', 'node-name': name, backing } : { driver: 'memory', 'node-name': name, size };
    const path = join(dir, `ours-${name}.qcow2`);
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(size)]);
    const d: Record<string, unknown> = { driver: 'qcow2', 'node-name': name, file: { driver: 'file', filename: path } };
    if (backing) d.backing = backing;
    return d;
  };
  if (kind === 'memory') {
    await graph.add(await disk('parent0') as never);
  } else {
    const raw = join(dir, 'ours.raw');
    sh('qemu-img', ['create', '-q', '-f', 'raw', raw, String(size)]);
    await graph.add({ driver: 'raw', 'node-name': 'parent0', file: { driver: 'file', filename: raw } });
  }
  await graph.add(await disk('hidden0', 'parent0') as never);
  await graph.add(await disk('active0', 'hidden0') as never);
  const repl = await graph.add({ driver: 'replication', 'node-name': 'childs0', mode: 'secondary', 'top-id': 'childs0', file: 'active0' }) as ReplicationNode;
  const local = new BlockBackend('parent0', graph.get('parent0'));
  const top = new BlockBackend('top', repl);
  const path = join(dir, `ours-${kind}.qmp`);
  const server = new QmpServer({ registry: buildRegistry({ graph, replication: replicationControl(graph) }), events: new EventHub() });
  await server.listen({ path });
  const qmp = await QmpClient.connect(path);
  await qmp.execute('xen-set-replication', { enable: true, primary: false });
  return {
    graph, local, top, qmp,
    async close() {
      await qmp.close();
      await server.close();
      top.detach();
      local.detach();
      await graph.closeAll();
    },
  };
}

async function fillInChunks(write: (o: number, b: Buffer) => Promise<void>, offset: number, length: number): Promise<void> {
  const chunk = Buffer.alloc(Math.min(length, 4 * MiB), 0x5a);
  for (let done = 0; done < length; done += chunk.length) await write(offset + done, chunk.subarray(0, Math.min(chunk.length, length - done)));
}

async function checkpoints(dir: string, quick: boolean): Promise<BenchRow[]> {
  const size = 256 * MiB;
  const reps = quick ? 3 : 5;
  const cases: Array<[string, number]> = [['empty', 0], ['1 MiB + 1 MiB', MiB], ['64 MiB + 64 MiB', 64 * MiB]];
  const kinds: Array<'memory' | 'qcow2'> = builtinDrivers.some((d) => d.name === 'qcow2') ? ['memory', 'qcow2'] : ['memory'];
  const qemuDir = mkdtempSync(join(dir, 'qemu-'));
  const qemu = await QemuSecondary.start(qemuDir, size);
  const peer = new Map<string, number>();
  try {
    for (const [label, bytes] of cases) {
      const times: number[] = [];
      for (let r = 0; r < reps; r++) {
        await qemu.checkpoint();
        if (bytes > 0) {
          await qemu.primaryWrite(0, bytes);
          await qemu.viewWrite(128 * MiB, bytes);
        }
        times.push(await qemu.checkpoint());
      }
      peer.set(label, median(times));
    }
  } finally {
    await qemu.close();
  }
  const rows: BenchRow[] = [];
  for (const kind of kinds) {
    const ours = await ourSecondary(dir, size, kind);
    try {
      for (const [label, bytes] of cases) {
        const times: number[] = [];
        for (let r = 0; r < reps; r++) {
          await ours.qmp.execute('xen-colo-do-checkpoint');
          if (bytes > 0) {
            await fillInChunks((o, b) => ours.local.write(o, b), 0, bytes);
            await fillInChunks((o, b) => ours.top.write(o, b), 128 * MiB, bytes);
          }
          const t0 = performance.now();
          await ours.qmp.execute('xen-colo-do-checkpoint');
          times.push(performance.now() - t0);
        }
        const oursMs = median(times);
        const peerMs = peer.get(label)!;
        rows.push({
          name: `checkpoint, ${label} buffered (ours: ${kind} overlays; QEMU: qcow2 in tmpfs)`,
          unit: 'ms', ours: oursMs, peer: peerMs, ratio: peerMs / oursMs,
          oursCommand: `colo-blk QMP xen-colo-do-checkpoint round trip (median of ${reps})`,
          peerCommand: `${QemuSecondary.command}; QMP xen-colo-do-checkpoint round trip (median of ${reps})`,
        });
      }
    } finally {
      await ours.close();
    }
  }
  return rows;
}

export async function benchReplication(options: ReplicationBenchOptions = {}): Promise<BenchRow[]> {
  const base = options.dir ?? (process.platform === 'linux' ? '/dev/shm' : tmpdir());
  const dir = mkdtempSync(join(base, 'colo-blk-bench-repl-'));
  try {
    return [
      ...await cbwOnFiles(dir, options.quick ?? false),
      ...await cbwOnMemory(options.quick ?? false),
      ...await checkpoints(dir, options.quick ?? false),
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function fmt(n: number | null, unit: string): string {
  if (n === null) return '-';
  return unit === 'ms' ? n.toFixed(2) : n >= 100 ? n.toFixed(0) : n.toFixed(1);
}

/** A markdown table (the peer column says whether it is QEMU or our own baseline) and the commands. */
export function formatReplicationRows(rows: BenchRow[]): string {
  const out: string[] = ['| benchmark | unit | colo-blk | QEMU / baseline | ratio |', '|---|---|---|---|---|'];
  for (const r of rows) {
    out.push(`| ${r.name} | ${r.unit} | ${fmt(r.ours, r.unit)} | ${fmt(r.peer, r.unit)} | ${r.ratio === null ? '-' : `${r.ratio.toFixed(2)}x`} |`);
  }
  out.push('', 'Commands:');
  const seen = new Set<string>();
  for (const r of rows) {
    for (const c of [r.oursCommand, r.peerCommand]) {
      if (c && !seen.has(c)) {
        seen.add(c);
        out.push(`  ${c}`);
      }
    }
  }
  out.push('', 'ratio > 1 means colo-blk is faster (for ms rows: takes less time).');
  return out.join('\n');
}

async function main(): Promise<void> {
  const rows = await benchReplication({ quick: process.argv.includes('--quick') });
  process.stdout.write(`${formatReplicationRows(rows)}\n`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  if (process.env.UV_THREADPOOL_SIZE === undefined) {
    // libuv sizes its thread pool before a module can set the variable: run again with it.
    const r = spawnSync(process.execPath, process.argv.slice(1), {
      stdio: 'inherit',
      env: { ...process.env, UV_THREADPOOL_SIZE: String(Math.min(64, Math.max(2, availableParallelism()))) },
    });
    process.exit(r.status ?? 1);
  }
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
