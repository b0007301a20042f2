/**
 * `npm run bench`: every component benchmark, each measured against its peer
 * tool in the same run and printed as ratios (colo-blk / peer, higher is
 * better). `--quick` shortens every section; names after the flags pick
 * sections (`npm run bench -- qcow2`). The pair harness (colo-blk pair vs a
 * QEMU COLO pair) is `npm run bench:pair`.
 */
import { spawnSync } from 'node:child_process';
import { availableParallelism, cpus, release } from 'node:os';
import { runNbdClientBench } from './nbd-client.js';
import { runNbdBench } from './nbd.js';
import { formatRows, runQcow2Bench } from './qcow2.js';
import { benchReplication, formatReplicationRows } from './replication.js';

interface Section {
  name: string;
  title: string;
  /** Runs the section; sections print their own tables through `out`. */
  run(quick: boolean, out: (line: string) => void): Promise<void>;
}

const sections: Section[] = [
  {
    name: 'qcow2',
    title: 'qcow2 driver vs qemu-img bench',
    run: async (quick, out) => out(formatRows(await runQcow2Bench(quick ? { smallCount: 5000, largeCount: 300 } : {}))),
  },
  {
    name: 'nbd',
    title: 'NBD server: fio nbd engine against colo-blk vs qemu-nbd, same image',
    run: async (quick, out) => { await runNbdBench({ ...(quick ? { runtime: 2, reps: 1 } : {}), out }); },
  },
  {
    name: 'nbd-client',
    title: "NBD client: colo-blk's nbd driver vs QEMU's client, both against qemu-nbd",
    run: async (quick, out) => { await runNbdClientBench({ ...(quick ? { scale: 0.1, reps: 1 } : {}), out }); },
  },
  {
    name: 'replication',
    title: 'replication: copy-before-write vs qemu-img bench, checkpoints vs a QEMU 7.2 secondary',
    run: async (quick, out) => out(formatReplicationRows(await benchReplication({ quick }))),
  },
];

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const wanted = args.filter((a) => !a.startsWith('--'));
  const chosen = sections.filter((s) => wanted.length === 0 || wanted.includes(s.name));
  process.stdout.write(`colo-blk benchmarks: node ${process.version}, ${cpus()[0]?.model ?? 'unknown CPU'} x${availableParallelism()}, kernel ${release()}, UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE}\n`);
  for (const s of chosen) {
    process.stdout.write(`\n== ${s.title} ==\n`);
    await s.run(quick, (line) => process.stdout.write(`${line}\n`));
  }
}

// libuv sizes its thread pool once, before an ES module can set the variable,
// so the launcher re-executes itself with it (the daemon does the same).
if (process.env.UV_THREADPOOL_SIZE === undefined) {
  const r = spawnSync(process.execPath, process.argv.slice(1), {
    stdio: 'inherit',
    env: { ...process.env, UV_THREADPOOL_SIZE: String(Math.min(64, Math.max(2, availableParallelism()))) },
  });
  process.exit(r.status ?? 1);
}
await main();
