/**
 * NBD server speed: fio's nbd engine against `colo-blk daemon` and against
 * qemu-nbd serving the same kind of image, in the same run, images in
 * /dev/shm, with the fio command lines of the QEMU COLO anchor
 * (/work/shared/anchors/qemu-colo/REPORT.md §6). Prints IOPS, MiB/s and the
 * ratio colo-blk / qemu-nbd per row, and the command lines.
 *
 * Runnable alone: `node dist/bench/nbd.js [--runtime S] [--size BYTES]
 * [--reps N] [--formats raw,qcow2] [--profile DIR]`; `bench/run.ts` calls
 * `runNbdBench`. The sequential rows are time-based like the random ones
 * (the anchor ran them size-based; at 1 GiB/s that is a quarter second, too
 * short to measure), each row alternates the two servers rep by rep and
 * reports medians, because this 2-CPU VM is noisy.
 *
 * Two more rows drive each server with QEMU's own NBD client (`qemu-img
 * bench`), which is what a QEMU primary uses to replicate to its secondary:
 * with 2-16 writes in flight it stalls on Nagle and delayed ACKs against
 * qemu-nbd, whose socket lacks TCP_NODELAY (anchor REPORT.md §5.2). They are
 * reported without a goal; the request counts keep the stalled runs short.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NODE_FLAGS } from '../src/cli/node-flags.js';

export interface NbdBenchOptions {
  /** Seconds per measurement (the anchor used 20). */
  runtime?: number;
  /** Image size in bytes (the anchor used 268435456). */
  size?: number;
  /** Measurements per server and row; medians are reported. */
  reps?: number;
  /** Image formats to run; qcow2 only when colo-blk has the driver. */
  formats?: ReadonlyArray<'raw' | 'qcow2'>;
  /** Where images live (default /dev/shm). */
  dir?: string;
  /** Run colo-blk under `node --cpu-prof` and summarise the profile here. */
  profileDir?: string;
  out?: (line: string) => void;
}

export interface Sample {
  iops: number;
  mibs: number;
}

export interface BenchRow {
  format: 'raw' | 'qcow2';
  name: string;
  colo: Sample;
  qemu: Sample;
  /** colo-blk / qemu-nbd (IOPS; the same as MiB/s at a fixed block size). */
  ratio: number;
  /** The goal this row is held to (1.0 for 1 MiB, 0.8 for 4 KiB; null: informational). */
  target: number | null;
  coloCommand: string;
  qemuCommand: string;
}

interface FioWorkload {
  tool: 'fio';
  name: string;
  rw: 'write' | 'read' | 'randwrite';
  bs: string;
  iodepth: number;
  target: number;
}

interface QemuClientWorkload {
  tool: 'qemu-img';
  name: string;
  depth: number;
  count: number;
  target: null;
}

type Workload = FioWorkload | QemuClientWorkload;

const WORKLOADS: Workload[] = [
  { tool: 'fio', name: 'seq write 1M QD1', rw: 'write', bs: '1M', iodepth: 1, target: 1.0 },
  { tool: 'fio', name: 'seq read 1M QD1', rw: 'read', bs: '1M', iodepth: 1, target: 1.0 },
  { tool: 'fio', name: 'rand write 4K QD1', rw: 'randwrite', bs: '4k', iodepth: 1, target: 0.8 },
  { tool: 'fio', name: 'rand write 4K QD16', rw: 'randwrite', bs: '4k', iodepth: 16, target: 0.8 },
  { tool: 'qemu-img', name: 'QEMU client 4K QD2', depth: 2, count: 250, target: null },
  { tool: 'qemu-img', name: 'QEMU client 4K QD16', depth: 16, count: 2000, target: null },
];

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

function fioArgs(w: FioWorkload, uri: string, size: number, runtime: number, output: string): string[] {
  return [
    `--name=${w.rw}-${w.bs}-qd${w.iodepth}`, '--ioengine=nbd', `--uri=${uri}`, `--rw=${w.rw}`, `--bs=${w.bs}`,
    `--iodepth=${w.iodepth}`, `--size=${size}`, '--numjobs=1', '--output-format=json', `--output=${output}`,
    '--time_based', `--runtime=${runtime}`, '--norandommap', '--randrepeat=0',
  ];
}

function qemuBenchArgs(w: QemuClientWorkload, uri: string): string[] {
  return ['bench', '-f', 'raw', '-w', '-c', String(w.count), '-d', String(w.depth), '-s', '4096', uri];
}

function runQemuBench(args: string[], count: number): Sample {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout);
  if (r.status !== 0 || !m) throw new Error(`qemu-img bench failed (${r.status}): ${r.stdout}${r.stderr}`);
  const iops = count / Number(m[1]);
  return { iops, mibs: (iops * 4096) / (1 << 20) };
}

function commandFor(w: Workload, uri: string, size: number, runtime: number, output: string): string {
  return w.tool === 'fio' ? `fio ${fioArgs(w, uri, size, runtime, output).join(' ')}` : `qemu-img ${qemuBenchArgs(w, uri).join(' ')}`;
}

function measure(w: Workload, uri: string, size: number, runtime: number, output: string): Sample {
  return w.tool === 'fio'
    ? runFio(fioArgs(w, uri, size, runtime, output), output, w.rw)
    : runQemuBench(qemuBenchArgs(w, uri), w.count);
}

function runFio(args: string[], output: string, rw: FioWorkload['rw']): Sample {
  const r = spawnSync('fio', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`fio failed (${r.status}): ${r.stderr}`);
  const text = readFileSync(output, 'utf8');
  const job = (JSON.parse(text.slice(text.indexOf('{'))) as { jobs: Array<Record<string, { iops: number; bw: number }>> }).jobs[0]!;
  const side = job[rw === 'read' ? 'read' : 'write']!;
  return { iops: side.iops, mibs: side.bw / 1024 };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      s.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
    });
  });
}

async function waitForFile(path: string, proc: ChildProcess, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!existsSync(path)) {
    if (proc.exitCode !== null) throw new Error(`${what} exited with ${proc.exitCode}`);
    if (Date.now() > deadline) throw new Error(`${what} did not start`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    proc.once('exit', () => resolve());
    proc.kill('SIGTERM');
  });
}

interface Servers {
  coloUri: string;
  qemuUri: string;
  coloCmd: string;
  qemuCmd: string;
  close(): Promise<void>;
}

async function startServers(format: 'raw' | 'qcow2', dir: string, size: number, profileDir: string | undefined): Promise<Servers> {
  const coloImage = join(dir, `colo.${format}`);
  const qemuImage = join(dir, `qemu.${format}`);
  if (format === 'raw') {
    // Fully allocated and identical, as in the anchor (random data, no holes).
    const data = Buffer.allocUnsafe(size);
    for (let at = 0; at < size; at += 1 << 26) randomFillSync(data, at, Math.min(1 << 26, size - at));
    writeFileSync(coloImage, data);
    writeFileSync(qemuImage, data);
  } else {
    for (const img of [coloImage, qemuImage]) {
      const r = spawnSync('qemu-img', ['create', '-f', 'qcow2', img, String(size)], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`qemu-img create failed: ${r.stderr}`);
    }
  }
  const nodeArgs = profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [];
  const blockdev = format === 'raw'
    ? `{"driver":"raw","node-name":"disk0","file":{"driver":"file","filename":"${coloImage}"}}`
    : `{"driver":"qcow2","node-name":"disk0","file":{"driver":"file","filename":"${coloImage}"}}`;
  const coloArgs = [...NODE_FLAGS, CLI, 'daemon', '--blockdev', blockdev, '--nbd-server', 'addr.type=inet,addr.host=127.0.0.1,addr.port=0',
    '--export', 'type=nbd,id=e0,node-name=disk0,name=disk,writable=on', '--log-level', 'warn'];
  const colo = spawn(process.execPath, [...nodeArgs, ...coloArgs], { stdio: ['ignore', 'pipe', 'inherit'] });
  const ready = await new Promise<{ nbd: string }>((resolve, reject) => {
    let buf = '';
    colo.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) resolve(JSON.parse(buf.slice(0, buf.indexOf('\n'))) as { nbd: string });
    });
    colo.once('exit', (code) => reject(new Error(`colo-blk daemon exited with ${code}`)));
  });
  const port = await freePort();
  const pidfile = join(dir, `qemu-nbd.${format}.pid`);
  const qemuArgs = ['-f', format, '-b', '127.0.0.1', '-p', String(port), '-x', 'disk', '-t', '--cache=writeback', '--aio=threads',
    '--pid-file', pidfile, qemuImage];
  const qemu = spawn('qemu-nbd', qemuArgs, { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForFile(pidfile, qemu, 'qemu-nbd');
  return {
    coloUri: `nbd://${ready.nbd}/disk`,
    qemuUri: `nbd://127.0.0.1:${port}/disk`,
    coloCmd: `node ${[...nodeArgs, ...coloArgs].map(shellQuote).join(' ')}`,
    qemuCmd: `qemu-nbd ${qemuArgs.join(' ')}`,
    async close() {
      await Promise.all([stop(colo), stop(qemu)]);
    },
  };
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

function coloHasQcow2(): boolean {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e',
    `import { createGraph } from ${JSON.stringify(new URL('../src/drivers/index.js', import.meta.url).href)};
     process.exit(createGraph().hasDriver('qcow2') ? 0 : 1);`]);
  return r.status === 0;
}

export async function runNbdBench(options: NbdBenchOptions = {}): Promise<BenchRow[]> {
  const out = options.out ?? ((line: string) => process.stdout.write(`${line}\n`));
  const runtime = options.runtime ?? 20;
  const size = options.size ?? 268435456;
  const reps = options.reps ?? 3;
  const wanted = options.formats ?? ['raw', 'qcow2'];
  const formats = wanted.filter((f) => f === 'raw' || coloHasQcow2());
  if (formats.length < wanted.length) out('qcow2 rows skipped: colo-blk has no qcow2 driver in this build');
  for (const tool of ['fio', 'qemu-nbd']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is not installed`);
  }
  const dir = mkdtempSync(join(options.dir ?? '/dev/shm', 'colo-blk-bench-nbd-'));
  const rows: BenchRow[] = [];
  try {
    for (const format of formats) {
      const servers = await startServers(format, dir, size, options.profileDir);
      try {
        // One untimed second of each fio workload per server: JIT and caches warm, as the anchor's were.
        for (const w of WORKLOADS) {
          if (w.tool !== 'fio') continue;
          for (const uri of [servers.coloUri, servers.qemuUri]) measure(w, uri, size, 1, join(dir, 'warmup.json'));
        }
        for (const w of WORKLOADS) {
          const colo: Sample[] = [];
          const qemu: Sample[] = [];
          const outFile = join(dir, 'fio.json');
          for (let rep = 0; rep < reps; rep++) {
            // Alternate which server goes first so that drift in the VM favours neither.
            const order = rep % 2 === 0 ? ['colo', 'qemu'] as const : ['qemu', 'colo'] as const;
            for (const who of order) {
              const uri = who === 'colo' ? servers.coloUri : servers.qemuUri;
              (who === 'colo' ? colo : qemu).push(measure(w, uri, size, runtime, outFile));
            }
          }
          const c = { iops: median(colo.map((s) => s.iops)), mibs: median(colo.map((s) => s.mibs)) };
          const q = { iops: median(qemu.map((s) => s.iops)), mibs: median(qemu.map((s) => s.mibs)) };
          rows.push({
            format,
            name: w.name,
            colo: c,
            qemu: q,
            ratio: c.iops / q.iops,
            target: w.target,
            coloCommand: commandFor(w, servers.coloUri, size, runtime, 'OUT.json'),
            qemuCommand: commandFor(w, servers.qemuUri, size, runtime, 'OUT.json'),
          });
        }
        out(`# ${format}: colo-blk: ${servers.coloCmd}`);
        out(`# ${format}: qemu-nbd: ${servers.qemuCmd}`);
      } finally {
        await servers.close();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  printTable(rows, reps, runtime, out);
  if (options.profileDir) summariseProfiles(options.profileDir, out);
  return rows;
}

function printTable(rows: BenchRow[], reps: number, runtime: number, out: (line: string) => void): void {
  out(`\nfio nbd engine (and QEMU's client via qemu-img bench), median of ${reps} x ${runtime} s per server, servers alternated;`);
  out('ratio = colo-blk / qemu-nbd');
  out(`${'row'.padEnd(28)}${'colo-blk IOPS'.padStart(14)}${'MiB/s'.padStart(9)}${'qemu-nbd IOPS'.padStart(15)}${'MiB/s'.padStart(9)}${'ratio'.padStart(8)}  goal`);
  for (const r of rows) {
    out(`${`${r.format} ${r.name}`.padEnd(28)}${r.colo.iops.toFixed(0).padStart(14)}${r.colo.mibs.toFixed(1).padStart(9)}`
      + `${r.qemu.iops.toFixed(0).padStart(15)}${r.qemu.mibs.toFixed(1).padStart(9)}${r.ratio.toFixed(2).padStart(8)}  `
      + (r.target === null ? '(informational)' : `>= ${r.target.toFixed(1)} ${r.ratio >= r.target ? 'met' : 'MISSED'}`));
  }
  out('\ncommand lines (OUT.json per run):');
  for (const r of rows) out(`  ${r.format} ${r.name}:\n    ${r.coloCommand}\n    ${r.qemuCommand}`);
}

/** Self time per function over every profile in `dir`, top 25. */
function summariseProfiles(dir: string, out: (line: string) => void): void {
  const self = new Map<string, number>();
  let total = 0;
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.cpuprofile'))) {
    const p = JSON.parse(readFileSync(join(dir, f), 'utf8')) as {
      nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number } }>;
      samples: number[];
      timeDeltas: number[];
    };
    const byId = new Map(p.nodes.map((n) => [n.id, n.callFrame]));
    p.samples.forEach((id, i) => {
      const cf = byId.get(id)!;
      const key = `${cf.functionName || '(anonymous)'} ${cf.url.split('/').pop()}:${cf.lineNumber + 1}`;
      const dt = p.timeDeltas[i] ?? 0;
      self.set(key, (self.get(key) ?? 0) + dt);
      total += dt;
    });
  }
  out(`\ncolo-blk CPU profile (self time, ${dir}):`);
  for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) out(`  ${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
}

function parseCli(argv: string[]): NbdBenchOptions {
  const o: NbdBenchOptions = {};
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i]!.split('=', 2) as [string, string | undefined];
    const value = (): string => inline ?? argv[++i] ?? '';
    switch (flag) {
      case '--runtime': o.runtime = Number(value()); break;
      case '--size': o.size = Number(value()); break;
      case '--reps': o.reps = Number(value()); break;
      case '--formats': o.formats = value().split(',') as Array<'raw' | 'qcow2'>; break;
      case '--dir': o.dir = value(); break;
      case '--profile': o.profileDir = value(); break;
      default: throw new Error(`unknown option ${flag} (use --runtime S --size BYTES --reps N --formats raw,qcow2 --dir D --profile DIR)`);
    }
  }
  return o;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  runNbdBench(parseCli(process.argv.slice(2))).catch((err: unknown) => {
    process.stderr.write(`bench/nbd: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
