/**
 * One measured run of one workload on one system, with its data check.
 * A check that fails throws DataCheckError: the run's numbers do not count
 * and the runner takes the system out of the benchmark.
 */
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { collectGarbage } from '../../src/util/gc.js';
import { bufferedBytes, type SystemId, type WorkloadId } from './config.js';
import { fioArgs, runFio, type FioWorkload } from './fio.js';
import { DataCheckError, expectFileEquals, expectImagesIdentical, firstDifference, readImage, readRange } from './images.js';
import { NbdConnection } from './nbd-client.js';
import { commandLine, type ProcessManager } from './processes.js';
import { cpuSecondsOf, foreignCpu, memoryOf, processTree, resetPeakMemory, snapshotCpu } from './procfs.js';
import type { System } from './system.js';

export type MetricId =
  | 'mibps' | 'iops' | 'ios' | 'latMeanUs' | 'clatP50Us' | 'clatP99Us'
  | 'secondaryMs' | 'primaryMs'
  | 'commandMs' | 'commitMs' | 'firstWriteMs';

export interface RunRecord {
  system: SystemId;
  workload: WorkloadId;
  round: number;
  rep: number;
  metrics: Partial<Record<MetricId, number>>;
  /** CPU seconds the system's processes used during the run. */
  serverCpuS?: number;
  /** Peak RSS per process role during the run, bytes. */
  peakRss?: Record<string, number>;
  /** False when the kernel did not let the peak be reset: peakRss is then the lifetime peak. */
  peakRssPerRun?: boolean;
  /** CPU seconds other processes on the machine used during the run (noise). */
  foreignCpuS?: number;
  foreignTop?: string;
  /** Bytes buffered in hidden and in active (checkpoint and failover runs). */
  buffered?: { hidden: number; active: number };
  fioOutput?: string;
  /** Failover: how the end of the commit was observed. */
  commitSeenBy?: string;
  /** The data checks this run passed. */
  checks: string[];
}

export interface RunContext {
  pm: ProcessManager;
  size: number;
  runtime: number;
  baseImage: string;
  fioDir: string;
  commandLog: string;
  progress(line: string): void;
}

const MiB = 1 << 20;

export function fioWorkload(id: WorkloadId, size: number, runtime: number): FioWorkload | null {
  switch (id) {
    case 'seq1m': return { tag: 'seq1m', rw: 'write', bs: '1M', iodepth: 1, size };
    case 'rand4k-qd1': return { tag: 'rand4k-qd1', rw: 'randwrite', bs: '4k', iodepth: 1, size, runtime };
    case 'rand4k-qd16': return { tag: 'rand4k-qd16', rw: 'randwrite', bs: '4k', iodepth: 16, size, runtime };
    default: return null;
  }
}

/** The fio command line of a workload, as the report prints it. */
export function fioCommandLine(id: WorkloadId, size: number, runtime: number): string | null {
  const w = fioWorkload(id, size, runtime);
  return w ? commandLine('fio', fioArgs(w, 'URI', 'OUT.json')) : null;
}

/**
 * Per-run resource accounting of each process of the system and its
 * descendants (a server that re-executes itself, say): CPU time used during
 * the run, and the sum of peak RSS, reset before the run.
 */
class Meter {
  private readonly snap0 = snapshotCpu();
  private readonly cpu0 = new Map<number, number>();
  readonly perRun: boolean;

  constructor(private readonly sys: System) {
    let perRun = true;
    for (const p of sys.pids()) {
      for (const pid of processTree(this.snap0, p.pid)) {
        perRun = resetPeakMemory(pid) && perRun;
        this.cpu0.set(pid, cpuSecondsOf(pid) ?? 0);
      }
    }
    this.perRun = perRun;
  }

  finish(rec: RunRecord): void {
    const snap1 = snapshotCpu();
    const foreign = foreignCpu(this.snap0, snap1);
    rec.foreignCpuS = foreign.seconds;
    rec.foreignTop = foreign.top;
    let cpu = 0;
    const peak: Record<string, number> = {};
    for (const p of this.sys.pids()) {
      for (const pid of processTree(snap1, p.pid)) {
        // A process born during the run used all its CPU time during the run.
        cpu += (cpuSecondsOf(pid) ?? 0) - (this.cpu0.get(pid) ?? 0);
        const m = memoryOf(pid);
        if (m) peak[p.role] = (peak[p.role] ?? 0) + m.peak;
      }
    }
    rec.serverCpuS = cpu;
    rec.peakRss = peak;
    rec.peakRssPerRun = this.perRun;
  }
}

/** Primary and secondary disks are identical (after a flush through the primary). */
async function checkReplicated(sys: System, ctx: RunContext, what: string): Promise<string> {
  const c = await NbdConnection.connect(sys.pvmUri());
  await c.flush();
  await c.close();
  await sys.checkHealth();
  const d = sys.disks();
  expectImagesIdentical(d.primary, d.secondary!, ctx.commandLog, `${sys.id} ${what}`);
  return 'primary == secondary (qemu-img compare)';
}

/**
 * One untimed second of each selected fio workload, so that JIT compilation
 * (colo-blk), allocator pools and page cache are warm before the first
 * measured run, on every system alike.
 */
export async function warmUp(sys: System, workloads: readonly WorkloadId[], ctx: RunContext): Promise<void> {
  for (const id of workloads) {
    const w = fioWorkload(id, ctx.size, 1);
    if (!w) continue;
    const name = `warmup-${sys.id}-${id}`;
    await runFio(ctx.pm, { ...w, runtime: 1 }, sys.pvmUri(), join(ctx.fioDir, `${name}.json`), name);
  }
  await sys.checkHealth();
}

export async function runFioWorkload(sys: System, id: WorkloadId, round: number, ctx: RunContext): Promise<RunRecord> {
  const w = fioWorkload(id, ctx.size, ctx.runtime)!;
  const rec: RunRecord = { system: sys.id, workload: id, round, rep: 0, metrics: {}, checks: [] };
  // As in the anchor's config a: every replicated run starts right after a checkpoint, copy-before-write armed.
  if (sys.replicated) await sys.checkpoint();
  await sys.checkHealth();
  const name = `${sys.id}-${id}-r${round}`;
  const output = join(ctx.fioDir, `${name}.json`);
  const meter = new Meter(sys);
  const r = await runFio(ctx.pm, w, sys.pvmUri(), output, name);
  meter.finish(rec);
  rec.fioOutput = output;
  rec.metrics = { mibps: r.mibps, iops: r.iops, ios: r.totalIos, latMeanUs: r.latMeanUs, clatP50Us: r.clatP50Us, clatP99Us: r.clatP99Us };
  await sys.checkHealth();
  if (sys.replicated) rec.checks.push(await checkReplicated(sys, ctx, `after ${id} round ${round}`));
  return rec;
}

/** Dirty-set sizes of the checkpoint cases (hidden via the primary, active via the secondary's view). */
export function checkpointCase(id: WorkloadId, size: number): { hidden: number; active: number } | null {
  switch (id) {
    case 'ckpt-empty': return { hidden: 0, active: 0 };
    case 'ckpt-1m': return { hidden: MiB, active: MiB };
    case 'ckpt-big': return { hidden: bufferedBytes(size), active: bufferedBytes(size) };
    default: return null;
  }
}

let patternCounter = 0;

/**
 * Checkpoint latency: an untimed checkpoint, then `hidden` bytes written
 * through the primary at 0 (copied before write into hidden) and `active`
 * bytes through the secondary's view at size/2 (into active), then the timed
 * checkpoint. Afterwards the secondary's view must show the primary's data
 * again in both regions, and the disks must be identical.
 */
export async function runCheckpointCase(sys: System, id: WorkloadId, round: number, rep: number, ctx: RunContext): Promise<RunRecord> {
  const c = checkpointCase(id, ctx.size)!;
  const rec: RunRecord = { system: sys.id, workload: id, round, rep, metrics: {}, checks: [], buffered: c };
  await sys.checkpoint();
  const pat = 0x40 + (patternCounter++ % 0x40);
  const activeAt = ctx.size / 2;
  if (c.hidden) {
    const pvm = await NbdConnection.connect(sys.pvmUri());
    await pvm.writePattern(0, c.hidden, pat);
    await pvm.close();
  }
  const svm = await NbdConnection.connect(sys.svmUri());
  try {
    if (c.active) await svm.writePattern(activeAt, c.active, pat ^ 0xff);
    // The harness times from its own event loop: a collection of its heap
    // (it just compared images) must not land inside the window it measures.
    collectGarbage();
    const t = await sys.checkpoint();
    rec.metrics = { secondaryMs: t.secondaryMs, primaryMs: t.primaryMs };
    for (const [at, len] of [[0, c.hidden], [activeAt, c.active]] as const) {
      if (!len) continue;
      const view = await svm.read(at, len);
      const d = firstDifference(view, readRange(sys.disks().primary, at, len));
      if (d !== null) {
        throw new DataCheckError(`${sys.id} ${id}: after the checkpoint the secondary's view differs from the primary at byte ${at + d}`);
      }
    }
  } finally {
    await svm.close();
  }
  if (c.hidden || c.active) rec.checks.push("secondary's view == primary after the checkpoint");
  rec.checks.push(await checkReplicated(sys, ctx, `after ${id} round ${round}`));
  return rec;
}

/**
 * Failover with D + D buffered (D = 64 MiB on 256 MiB images), on a fresh
 * pair: D written through the primary at 0 and checkpointed; then D through
 * the secondary's view at D (active) and D through the primary at 2D
 * (hidden); the primary is killed; the failover command is sent at t0; a
 * 4 KiB write to the secondary's view at 2.5D goes out as soon as the
 * command returns. Measured: the command's round trip, the end of the
 * commit, and the completion of that write, all from t0. Checked: the
 * secondary disk equals the model (the checkpointed state, plus the view's
 * writes, with the primary's writes since the checkpoint rolled back).
 */
export async function runFailover(sys: System, round: number, ctx: RunContext): Promise<RunRecord> {
  const D = bufferedBytes(ctx.size);
  const rec: RunRecord = { system: sys.id, workload: 'failover', round, rep: 0, metrics: {}, checks: [], buffered: { hidden: D, active: D } };
  const model = readImage(ctx.baseImage, ctx.size);
  const disks = sys.disks();
  const pvm = await NbdConnection.connect(sys.pvmUri());
  let svm: NbdConnection | null = null;
  try {
    await pvm.writePattern(0, D, 0x21);
    model.fill(0x21, 0, D);
    await sys.checkpoint();
    svm = await NbdConnection.connect(sys.svmUri());
    await svm.writePattern(D, D, 0x31);
    model.fill(0x31, D, 2 * D);
    await pvm.writePattern(2 * D, D, 0x41);
    await pvm.flush();
    await pvm.close();
    await sys.checkHealth();
    expectImagesIdentical(disks.primary, disks.secondary!, ctx.commandLog, `${sys.id} failover round ${round}, before the failover`);
    rec.checks.push('primary == secondary before the failover');

    await sys.killPrimary();
    const meter = new Meter(sys);
    const lateWrite = Buffer.alloc(4096, 0x51);
    const lateAt = 2 * D + D / 2;
    collectGarbage(); // as before the timed checkpoint
    const t = await sys.failover();
    // Awaited below; until then a failure must not count as unhandled.
    t.done.catch(() => undefined);
    await svm.write(lateAt, lateWrite);
    const firstWriteMs = performance.now() - t.t0;
    lateWrite.copy(model, lateAt);
    const commit = await t.done;
    meter.finish(rec);
    rec.metrics = { commandMs: t.commandMs, commitMs: commit.ms, firstWriteMs };
    rec.commitSeenBy = commit.via;
    await svm.flush();
    expectFileEquals(disks.secondary!, model, `${sys.id} failover round ${round}`);
    rec.checks.push('secondary disk == model (checkpoint + view writes; primary writes since the checkpoint rolled back)');
  } finally {
    await pvm.close().catch(() => undefined);
    await svm?.close().catch(() => undefined);
  }
  return rec;
}
