/**
 * `npm run bench`: every component benchmark, each measured against its peer
 * tool in the same run and printed as ratios (colo-blk / peer, higher is
 * better). `--quick` shortens every section; names after the flags pick
 * sections (`npm run bench -- qcow2`). The pair harness (colo-blk pair vs a
 * QEMU COLO pair) is `npm run bench:pair`.
 */
import { spawnSync } from 'node:child_process';
import { availableParallelism, cpus, release } from 'node:os';
import { formatRows, runQcow2Bench, type BenchRow } from './qcow2.js';

interface Section {
  name: string;
  title: string;
  run(quick: boolean): Promise<BenchRow[]>;
}

const sections: Section[] = [
  {
    name: 'qcow2',
    title: 'qcow2 driver vs qemu-img bench',
    run: (quick) => runQcow2Bench(quick ? { smallCount: 5000, largeCount: 300 } : {}),
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
    const rows = await s.run(quick);
    process.stdout.write(`${formatRows(rows)}\n`);
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
