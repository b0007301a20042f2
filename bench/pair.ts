/**
 * The replication-pair benchmark: colo-blk against QEMU 7.2's COLO block
 * replication, measured in the same run on this machine (issue 6).
 *
 *   npm run bench:pair                # full run (about half an hour)
 *   npm run bench:pair -- --quick     # smoke run (a few minutes)
 *   npm run bench:pair -- --help
 *
 * Prints one table (medians with min-max, ratio colo-blk / better QEMU) with
 * the command lines and versions, and writes everything, fio JSON and QMP
 * trace included, to bench/results/<UTC stamp>/. See bench/README.md.
 */
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { USAGE, parseConfig, type BenchConfig } from './pair/config.js';
import { createRandomImage } from './pair/images.js';
import { ProcessManager, hasCommand, runSync } from './pair/processes.js';
import { buildRows, formatTable } from './pair/report.js';
import { runBenchmark } from './pair/runner.js';
import { median } from './pair/stats.js';
import { collectVersions } from './pair/versions.js';
import { fioCommandLine } from './pair/workloads.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MiB = 1 << 20;

function stamp(): string {
  return new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

function checkTools(): void {
  const missing = ['qemu-system-x86_64', 'qemu-img', 'qemu-nbd', 'fio'].filter((t) => !hasCommand(t));
  if (missing.length) throw new Error(`missing tools: ${missing.join(', ')} (.ci/run installs them: qemu-system-x86 qemu-utils fio)`);
  const eng = runSync('fio', ['--enghelp']);
  if (!/\bnbd\b/.test(eng.stdout)) throw new Error('this fio has no nbd ioengine (fio --enghelp does not list it)');
}

const WORK_PREFIX = 'colo-blk-bench-pair-';

/** Image folders left by a harness that was SIGKILLed (its children died with it; its folder did not). */
function removeStaleWorkDirs(base: string): void {
  for (const name of readdirSync(base)) {
    if (!name.startsWith(WORK_PREFIX)) continue;
    let owner = Number.NaN;
    try {
      owner = Number(readFileSync(join(base, name, 'owner.pid'), 'utf8'));
    } catch {
      continue;
    }
    try {
      process.kill(owner, 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') rmSync(join(base, name), { recursive: true, force: true });
    }
  }
}

async function main(argv: string[]): Promise<number> {
  let cfg: BenchConfig;
  try {
    cfg = parseConfig(argv, process.env);
  } catch (err) {
    process.stderr.write(`bench:pair: ${(err as Error).message}\n`);
    return 2;
  }
  if (cfg.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  checkTools();

  const started = stamp();
  const outDir = cfg.outDir ?? join(ROOT, 'bench', 'results', started);
  const logDir = join(outDir, 'logs');
  const fioDir = join(outDir, 'fio');
  mkdirSync(logDir, { recursive: true });
  mkdirSync(fioDir, { recursive: true });
  const commandLog = join(outDir, 'commands.log');
  const benchLog = join(outDir, 'bench.log');
  removeStaleWorkDirs(cfg.workDir);
  const workDir = mkdtempSync(join(cfg.workDir, WORK_PREFIX));
  writeFileSync(join(workDir, 'owner.pid'), String(process.pid));
  const progress = (line: string): void => {
    process.stderr.write(`${line}\n`);
    appendFileSync(benchLog, `${line}\n`);
  };

  const pm = new ProcessManager(logDir, commandLog);
  let interrupted = false;
  const cleanupSync = (): void => {
    pm.killAllNow();
    if (!cfg.keepWorkDir) rmSync(workDir, { recursive: true, force: true });
  };
  process.on('exit', cleanupSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (interrupted) {
        // A second Ctrl-C: no more waiting.
        cleanupSync();
        process.exit(130);
      }
      interrupted = true;
      progress(`\n${sig}: stopping every process of the benchmark (again to kill at once)`);
      void pm.stopAll(2000).finally(() => {
        cleanupSync();
        process.exit(sig === 'SIGINT' ? 130 : 143);
      });
    });
  }

  const versions = collectVersions();
  writeFileSync(join(outDir, 'versions.json'), `${JSON.stringify(versions, null, 1)}\n`);
  progress(`bench:pair ${started}: ${cfg.rounds} round(s), ${cfg.runtime} s per random run, ${cfg.size / MiB} MiB images in ${workDir}`);
  progress(`results: ${outDir}`);
  const baseImage = join(workDir, 'base.raw');
  createRandomImage(baseImage, cfg.size);

  const t0 = Date.now();
  const outcome = await runBenchmark(cfg, {
    pm, workDir, baseImage, fioDir, commandLog, progress,
    qmpTrace: join(outDir, 'qmp-trace.jsonl'),
    interrupted: () => interrupted,
  });
  if (interrupted) return 130;

  const input = { records: outcome.records, selected: cfg.systems, workloads: cfg.workloads, skipped: outcome.skipped, failed: outcome.failed, size: cfg.size };
  const rows = buildRows(input);
  const table = formatTable(rows);
  const foreign = outcome.records.map((r) => r.foreignCpuS).filter((v): v is number => v !== undefined);
  const fioCommands = Object.fromEntries(cfg.workloads.map((w) => [w, fioCommandLine(w, cfg.size, cfg.runtime)]).filter(([, c]) => c));

  const lines: string[] = [];
  lines.push('');
  lines.push(`colo-blk replication-pair benchmark ${started}: ${cfg.rounds} round(s), systems alternated round-robin, `
    + `${cfg.runtime} s per random-write run, ${cfg.size / MiB} MiB images in tmpfs, loopback TCP`);
  lines.push('');
  lines.push(table);
  lines.push('');
  for (const [id, why] of Object.entries(outcome.skipped)) lines.push(`SKIPPED ${id}: ${why}`);
  for (const [id, why] of Object.entries(outcome.failed)) lines.push(`FAILED ${id}: ${why}`);
  for (const [id, what] of Object.entries(outcome.restarts)) {
    lines.push(`RESTARTED ${id} (stopped from outside the harness; the run was retried on a fresh instance): ${(what ?? []).join('; ')}`);
  }
  if (foreign.length) {
    lines.push(`Noise: other processes on the machine used ${median(foreign).toFixed(1)} CPU-s per run (median; max ${Math.max(...foreign).toFixed(1)}).`);
  }
  lines.push('');
  lines.push('Versions:');
  for (const [k, v] of Object.entries(versions)) lines.push(`  ${k}: ${v}`);
  lines.push('');
  lines.push('Command lines (URI: each system\'s export; OUT.json: bench/results/<stamp>/fio/<system>-<workload>-r<round>.json):');
  for (const [w, c] of Object.entries(fioCommands)) lines.push(`  ${w}: ${c}`);
  const recipes = new Map<string, string>();
  for (const [id, cmds] of Object.entries(outcome.commands)) {
    const own = (cmds ?? []).filter((c) => !c.startsWith('  '));
    const qmp = (cmds ?? []).filter((c) => c.startsWith('  '));
    for (const c of own) lines.push(`  ${id}: ${c}`);
    const key = qmp.join('\n');
    if (qmp.length && recipes.has(key)) lines.push(`  ${id}:   the same ${qmp.length} QMP commands as ${recipes.get(key)}`);
    else for (const c of qmp) lines.push(`  ${id}: ${c}`);
    if (qmp.length) recipes.set(key, recipes.get(key) ?? id);
  }
  lines.push('  checkpoint: {"execute":"xen-colo-do-checkpoint"} on the secondary (timed), then on the primary');
  lines.push('  failover: primary SIGKILLed; nbd-server-remove {"name":"parent0","mode":"hard"}; then timed from');
  lines.push('    xen-set-replication {"enable":false,"primary":false,"failover":true} on the secondary');
  lines.push(`Every QMP command with its round trip: ${relative(process.cwd(), join(outDir, 'qmp-trace.jsonl'))}`);
  const text = lines.join('\n');
  process.stdout.write(`${text}\n`);
  writeFileSync(join(outDir, 'summary.txt'), `${text}\n`);
  writeFileSync(join(outDir, 'results.json'), `${JSON.stringify({
    started, elapsed_s: Math.round((Date.now() - t0) / 1000), config: cfg, versions, fio_commands: fioCommands,
    commands: outcome.commands, skipped: outcome.skipped, failed: outcome.failed, restarts: outcome.restarts, rows, records: outcome.records,
  }, null, 1)}\n`);
  progress(`results written to ${outDir}`);
  return Object.keys(outcome.failed).length ? 1 : 0;
}

// Explicit exits: a handle left open by a failed system must not keep the harness alive.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench:pair: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  },
);
