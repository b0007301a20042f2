/**
 * The benchmark's schedule: every round runs each workload on each
 * selected system in turn (round-robin, the starting system rotating from
 * round to round), so drift on this shared machine spreads over all
 * systems instead of landing on one. Throughput and checkpoint runs use one
 * long-lived instance per system; each failover run gets a fresh pair.
 * A system that fails a data check, crashes or errors is taken out of the
 * rest of the run and reported as FAILED.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ColoDaemon, ColoPair, coloBlkAvailability } from './colo-blk.js';
import { SYSTEM_INFO, appliesTo, type BenchConfig, type SystemId, type WorkloadId } from './config.js';
import { DataCheckError } from './images.js';
import { describeExit, isOutsideStop, type ProcessManager } from './processes.js';
import { QemuAlone, QemuPair } from './qemu.js';
import { QemuNbd } from './qemu-nbd.js';
import type { System, SystemContext } from './system.js';
import { runCheckpointCase, runFailover, runFioWorkload, warmUp, type RunContext, type RunRecord } from './workloads.js';

export interface BenchOutcome {
  records: RunRecord[];
  /** Systems not run, with the reason. */
  skipped: Partial<Record<SystemId, string>>;
  /** Systems taken out after an error, with the first error. */
  failed: Partial<Record<SystemId, string>>;
  /** Command lines per system. */
  commands: Partial<Record<SystemId, string[]>>;
  /** Systems restarted after something outside the harness stopped them, with what happened. */
  restarts: Partial<Record<SystemId, string[]>>;
}

/** A long-lived system stopped from outside is restarted at most this often; a crash is never restarted. */
const MAX_RESTARTS = 3;

export interface RunnerEnv {
  pm: ProcessManager;
  workDir: string;
  baseImage: string;
  fioDir: string;
  qmpTrace: string;
  commandLog: string;
  progress(line: string): void;
  /** Set when the user interrupted: the runner stops at the next run boundary. */
  interrupted(): boolean;
}

export function createSystem(id: SystemId, ctx: SystemContext): System {
  switch (id) {
    case 'colo-pair': return new ColoPair(id, ctx);
    case 'qemu-pair': return new QemuPair(id, ctx, false);
    case 'qemu-pair-tuned': return new QemuPair(id, ctx, true);
    case 'colo-alone': return new ColoDaemon(id, 'alone', ctx);
    case 'qemu-alone': return new QemuAlone(id, ctx, false);
    case 'qemu-alone-tuned': return new QemuAlone(id, ctx, true);
    case 'colo-nbd': return new ColoDaemon(id, 'nbd', ctx);
    case 'qemu-nbd': return new QemuNbd(id, ctx, false);
    case 'qemu-nbd-tuned': return new QemuNbd(id, ctx, true);
  }
}

/** Systems in `order`, starting at position `round` (round-robin rotation). */
export function rotate<T>(order: readonly T[], round: number): T[] {
  if (order.length === 0) return [];
  const k = round % order.length;
  return [...order.slice(k), ...order.slice(0, k)];
}

export async function runBenchmark(cfg: BenchConfig, env: RunnerEnv): Promise<BenchOutcome> {
  const outcome: BenchOutcome = { records: [], skipped: {}, failed: {}, commands: {}, restarts: {} };
  const availability = coloBlkAvailability();
  const selected: SystemId[] = [];
  for (const id of cfg.systems) {
    const info = SYSTEM_INFO[id];
    const reason = info.variant === 'colo-blk' ? availability[info.group] : null;
    if (reason) {
      outcome.skipped[id] = reason;
      env.progress(`SKIP ${id}: ${reason}`);
    } else {
      selected.push(id);
    }
  }

  const context = (name: string): SystemContext => {
    const dir = join(env.workDir, name);
    mkdirSync(dir, { recursive: true });
    return {
      pm: env.pm, dir, baseImage: env.baseImage, size: cfg.size,
      qmpTrace: env.qmpTrace, commandLog: env.commandLog, progress: env.progress,
    };
  };
  const runCtx: RunContext = {
    pm: env.pm, size: cfg.size, runtime: cfg.runtime, baseImage: env.baseImage,
    fioDir: env.fioDir, commandLog: env.commandLog, progress: env.progress,
  };

  const live = new Map<SystemId, System>();
  const fail = async (id: SystemId, err: unknown): Promise<void> => {
    const exits = live.get(id)?.unexpectedExits() ?? [];
    const died = exits.length ? ` (${exits.map((e) => `${e.role} ${describeExit(e.status)}`).join(', ')})` : '';
    const msg = (err instanceof Error ? err.message : String(err)) + died;
    outcome.failed[id] ??= msg;
    env.progress(`\n!!! ${id} FAILED${err instanceof DataCheckError ? ' ITS DATA CHECK' : ''}: ${msg}\n!!! ${id} is taken out of the rest of the run\n`);
    const sys = live.get(id);
    live.delete(id);
    await sys?.stop().catch(() => undefined);
  };

  /**
   * Another engineer's cleanup stopping our qemu-nbd or colo-blk daemon is
   * not a result: the system is started afresh (and warmed up) and the run
   * is retried. A crash (another exit status or signal) is a failure.
   */
  const restartIfStoppedFromOutside = async (id: SystemId, where: string): Promise<boolean> => {
    const sys = live.get(id);
    const exits = sys?.unexpectedExits() ?? [];
    if (!sys || exits.length === 0 || !exits.every((e) => isOutsideStop(e.status))) return false;
    const history = outcome.restarts[id] ?? [];
    if (history.length >= MAX_RESTARTS) return false;
    const what = `${exits.map((e) => `${e.role} ${describeExit(e.status)}`).join(', ')} before ${where}`;
    history.push(what);
    outcome.restarts[id] = history;
    env.progress(`\n!!! ${id}: ${what}, without the harness asking: stopped from outside; restarting it (${history.length} of ${MAX_RESTARTS})\n`);
    await sys.stop().catch(() => undefined);
    rmSync(join(env.workDir, id), { recursive: true, force: true });
    const fresh = createSystem(id, context(id));
    live.set(id, fresh);
    await fresh.start();
    await warmUp(fresh, cfg.workloads, runCtx);
    return true;
  };

  const needsLongLived = cfg.workloads.some((w) => w !== 'failover');
  try {
    if (needsLongLived) {
      for (const id of selected) {
        if (!cfg.workloads.some((w) => w !== 'failover' && appliesTo(w, id))) continue;
        if (env.interrupted()) break;
        const sys = createSystem(id, context(id));
        live.set(id, sys);
        try {
          env.progress(`start ${id}`);
          await sys.start();
          outcome.commands[id] = sys.describe();
          await warmUp(sys, cfg.workloads, runCtx);
        } catch (err) {
          await fail(id, err);
        }
      }
    }

    for (let round = 0; round < cfg.rounds && !env.interrupted(); round++) {
      for (const workload of cfg.workloads) {
        const order = rotate(selected.filter((id) => appliesTo(workload, id)), round);
        for (const id of order) {
          if (env.interrupted() || outcome.failed[id]) continue;
          for (let attempt = 1; ; attempt++) {
            try {
              for (const rec of await runOne(id, workload, round + 1)) {
                outcome.records.push(rec);
                env.progress(`[round ${round + 1}/${cfg.rounds}] ${summaryLine(rec)}`);
              }
              break;
            } catch (err) {
              if (env.interrupted()) break;
              let restarted = false;
              if (attempt === 1) {
                try {
                  restarted = await restartIfStoppedFromOutside(id, `${workload} in round ${round + 1}`);
                } catch (e) {
                  await fail(id, new Error(`${(err as Error).message}; restarting it failed: ${(e as Error).message}`));
                  break;
                }
              }
              if (!restarted) {
                await fail(id, err);
                break;
              }
            }
          }
        }
      }
    }
  } finally {
    for (const sys of live.values()) await sys.stop().catch(() => undefined);
  }
  return outcome;

  async function runOne(id: SystemId, workload: WorkloadId, round: number): Promise<RunRecord[]> {
    if (workload === 'failover') {
      const name = `${id}-failover-r${round}`;
      const ctx = context(name);
      const sys = createSystem(id, ctx);
      try {
        await sys.start();
        outcome.commands[id] ??= sys.describe();
        return [await runFailover(sys, round, runCtx)];
      } finally {
        await sys.stop().catch(() => undefined);
        rmSync(ctx.dir, { recursive: true, force: true });
      }
    }
    const sys = live.get(id);
    if (!sys) throw new Error(`${id} is not running`);
    if (workload.startsWith('ckpt-')) {
      const out: RunRecord[] = [];
      for (let rep = 0; rep < cfg.checkpointReps; rep++) out.push(await runCheckpointCase(sys, workload, round, rep, runCtx));
      return out;
    }
    return [await runFioWorkload(sys, workload, round, runCtx)];
  }
}

const MiB = 1 << 20;

export function summaryLine(r: RunRecord): string {
  const m = r.metrics;
  const parts: string[] = [`${r.workload.padEnd(11)} ${r.system.padEnd(16)}`];
  if (m.iops !== undefined && r.workload !== 'seq1m') parts.push(`${m.iops.toFixed(0)} IOPS, p50 ${m.clatP50Us?.toFixed(0)} us`);
  else if (m.mibps !== undefined) parts.push(`${m.mibps.toFixed(1)} MiB/s`);
  if (m.secondaryMs !== undefined) parts.push(`checkpoint secondary ${m.secondaryMs.toFixed(2)} ms, primary ${m.primaryMs?.toFixed(2)} ms`);
  if (m.commitMs !== undefined) parts.push(`command ${m.commandMs?.toFixed(1)} ms, first write ${m.firstWriteMs?.toFixed(1)} ms, commit done ${m.commitMs.toFixed(1)} ms (${r.commitSeenBy})`);
  if (r.serverCpuS !== undefined) parts.push(`server CPU ${r.serverCpuS.toFixed(2)} s`);
  if (r.peakRss && Object.keys(r.peakRss).length) {
    parts.push(`peak RSS ${Object.entries(r.peakRss).map(([k, v]) => `${k} ${(v / MiB).toFixed(0)}`).join('/')} MiB`);
  }
  if (r.foreignCpuS !== undefined && r.foreignCpuS > 0.5) parts.push(`(others used ${r.foreignCpuS.toFixed(1)} CPU-s: ${r.foreignTop})`);
  if (r.checks.length) parts.push('data OK');
  return parts.join('  ');
}
