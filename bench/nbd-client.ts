/**
 * NBD client speed, the replication path's hop: colo-blk's nbd driver
 * against QEMU's (driven by `qemu-img bench`), both talking to the same
 * qemu-nbd over TCP, image in /dev/shm. Rows alternate the two clients rep
 * by rep and report medians. QEMU 7.2's client stalls on Nagle plus delayed
 * ACK with 2-16 requests in flight (anchor REPORT.md §5.2), so the QD16 row
 * uses few requests to stay short.
 *
 * Runnable alone: `node dist/bench/nbd-client.js [--reps N] [--scale F]`.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface ClientBenchOptions {
  reps?: number;
  /** Multiplies every row's request count (0.1 for a quick look). */
  scale?: number;
  dir?: string;
  out?: (line: string) => void;
}

export interface ClientBenchRow {
  name: string;
  coloIops: number;
  qemuIops: number;
  /** colo-blk / QEMU. */
  ratio: number;
  coloCommand: string;
  qemuCommand: string;
}

interface Row {
  name: string;
  write: boolean;
  size: number;
  depth: number;
  count: number;
}

const ROWS: Row[] = [
  { name: 'write 1M QD1', write: true, size: 1 << 20, depth: 1, count: 2000 },
  { name: 'read 1M QD1', write: false, size: 1 << 20, depth: 1, count: 2000 },
  { name: 'write 4K QD1', write: true, size: 4096, depth: 1, count: 50000 },
  { name: 'write 4K QD16', write: true, size: 4096, depth: 16, count: 2000 },
];

const LOAD = fileURLToPath(new URL('./nbd-client-load.js', import.meta.url));

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export async function runNbdClientBench(options: ClientBenchOptions = {}): Promise<ClientBenchRow[]> {
  const out = options.out ?? ((line: string) => process.stdout.write(`${line}\n`));
  const reps = options.reps ?? 3;
  const scale = options.scale ?? 1;
  const dir = mkdtempSync(join(options.dir ?? '/dev/shm', 'colo-blk-bench-nbdc-'));
  const image = join(dir, 'disk.raw');
  const size = 256 << 20;
  const data = Buffer.allocUnsafe(size);
  for (let at = 0; at < size; at += 1 << 26) randomFillSync(data, at, 1 << 26);
  writeFileSync(image, data);
  const port = await freePort();
  const pidfile = join(dir, 'qemu-nbd.pid');
  const server = spawn('qemu-nbd', ['-f', 'raw', '-b', '127.0.0.1', '-p', String(port), '-x', 'disk', '-t', '--cache=writeback',
    '--aio=threads', '--pid-file', pidfile, image], { stdio: ['ignore', 'ignore', 'inherit'] });
  const rows: ClientBenchRow[] = [];
  try {
    for (let i = 0; i < 1000 && !existsSync(pidfile); i++) await new Promise((r) => setTimeout(r, 10));
    const uri = `nbd://127.0.0.1:${port}/disk`;
    for (const row of ROWS) {
      const count = Math.max(16, Math.round(row.count * scale));
      const coloArgs = [LOAD, uri, String(count), String(row.depth), String(row.size), row.write ? 'write' : 'read'];
      const qemuArgs = ['bench', '-f', 'raw', ...(row.write ? ['-w'] : []), '-c', String(count), '-d', String(row.depth), '-s', String(row.size), uri];
      const colo: number[] = [];
      const qemu: number[] = [];
      for (let rep = 0; rep < reps; rep++) {
        const order = rep % 2 === 0 ? ['colo', 'qemu'] : ['qemu', 'colo'];
        for (const who of order) {
          if (who === 'colo') {
            const r = spawnSync(process.execPath, coloArgs, { encoding: 'utf8', env: { ...process.env, COLO_BLK_LOG_LEVEL: 'warn' } });
            if (r.status !== 0) throw new Error(`colo-blk client load failed: ${r.stderr}`);
            colo.push(count / (JSON.parse(r.stdout) as { seconds: number }).seconds);
          } else {
            const r = spawnSync('qemu-img', qemuArgs, { encoding: 'utf8' });
            const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout);
            if (r.status !== 0 || !m) throw new Error(`qemu-img bench failed: ${r.stdout}${r.stderr}`);
            qemu.push(count / Number(m[1]));
          }
        }
      }
      const c = median(colo);
      const q = median(qemu);
      rows.push({
        name: row.name, coloIops: c, qemuIops: q, ratio: c / q,
        coloCommand: `node ${coloArgs.join(' ')}`, qemuCommand: `qemu-img ${qemuArgs.join(' ')}`,
      });
    }
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  }
  out(`\nNBD client -> qemu-nbd (raw, /dev/shm), median of ${reps}; ratio = colo-blk nbd driver / QEMU nbd driver (qemu-img bench)`);
  out(`${'row'.padEnd(16)}${'colo-blk IOPS'.padStart(14)}${'QEMU IOPS'.padStart(12)}${'ratio'.padStart(8)}`);
  for (const r of rows) {
    out(`${r.name.padEnd(16)}${r.coloIops.toFixed(0).padStart(14)}${r.qemuIops.toFixed(0).padStart(12)}${r.ratio.toFixed(2).padStart(8)}`);
  }
  out('\ncommand lines:');
  for (const r of rows) out(`  ${r.name}:\n    ${r.coloCommand}\n    ${r.qemuCommand}`);
  return rows;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  const opt = (name: string): number | undefined => {
    const i = args.findIndex((a) => a === name || a.startsWith(`${name}=`));
    if (i < 0) return undefined;
    return Number(args[i]!.includes('=') ? args[i]!.split('=')[1] : args[i + 1]);
  };
  runNbdClientBench({ reps: opt('--reps'), scale: opt('--scale') }).catch((err: unknown) => {
    process.stderr.write(`bench/nbd-client: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
