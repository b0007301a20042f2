/**
 * Knobs, from flags or environment variables (flags win). Pure, so the
 * parsing is tested on its own.
 */
import { parseSize } from '../../src/util/size.js';

export const SYSTEM_IDS = [
  'colo-pair', 'qemu-pair', 'qemu-pair-tuned',
  'colo-alone', 'qemu-alone', 'qemu-alone-tuned',
  'colo-nbd', 'qemu-nbd', 'qemu-nbd-tuned',
] as const;
export type SystemId = (typeof SYSTEM_IDS)[number];

export const WORKLOAD_IDS = ['seq1m', 'rand4k-qd1', 'rand4k-qd16', 'ckpt-empty', 'ckpt-1m', 'ckpt-big', 'failover'] as const;
export type WorkloadId = (typeof WORKLOAD_IDS)[number];

export type Group = 'pair' | 'alone' | 'nbd';
export type Variant = 'colo-blk' | 'stock' | 'tuned';

/** What each system is: its group (which rows it fills) and variant (which column). */
export const SYSTEM_INFO: Readonly<Record<SystemId, { group: Group; variant: Variant }>> = {
  'colo-pair': { group: 'pair', variant: 'colo-blk' },
  'qemu-pair': { group: 'pair', variant: 'stock' },
  'qemu-pair-tuned': { group: 'pair', variant: 'tuned' },
  'colo-alone': { group: 'alone', variant: 'colo-blk' },
  'qemu-alone': { group: 'alone', variant: 'stock' },
  'qemu-alone-tuned': { group: 'alone', variant: 'tuned' },
  'colo-nbd': { group: 'nbd', variant: 'colo-blk' },
  'qemu-nbd': { group: 'nbd', variant: 'stock' },
  'qemu-nbd-tuned': { group: 'nbd', variant: 'tuned' },
};

export function systemFor(group: Group, variant: Variant): SystemId {
  return (Object.keys(SYSTEM_INFO) as SystemId[]).find((id) => SYSTEM_INFO[id].group === group && SYSTEM_INFO[id].variant === variant)!;
}

/** Checkpoint and failover need a replicated pair; fio workloads run on every system. */
export function appliesTo(workload: WorkloadId, system: SystemId): boolean {
  return SYSTEM_INFO[system].group === 'pair' || !(workload.startsWith('ckpt-') || workload === 'failover');
}

/** Names that stand for several systems or workloads. */
const SYSTEM_ALIASES: Record<string, readonly SystemId[]> = {
  all: SYSTEM_IDS,
  pair: ['colo-pair', 'qemu-pair', 'qemu-pair-tuned'],
  alone: ['colo-alone', 'qemu-alone', 'qemu-alone-tuned'],
  nbd: ['colo-nbd', 'qemu-nbd', 'qemu-nbd-tuned'],
  'colo-blk': ['colo-pair', 'colo-alone', 'colo-nbd'],
  qemu: ['qemu-pair', 'qemu-pair-tuned', 'qemu-alone', 'qemu-alone-tuned', 'qemu-nbd', 'qemu-nbd-tuned'],
  stock: ['qemu-pair', 'qemu-alone', 'qemu-nbd'],
  tuned: ['qemu-pair-tuned', 'qemu-alone-tuned', 'qemu-nbd-tuned'],
};

const WORKLOAD_ALIASES: Record<string, readonly WorkloadId[]> = {
  all: WORKLOAD_IDS,
  fio: ['seq1m', 'rand4k-qd1', 'rand4k-qd16'],
  throughput: ['seq1m', 'rand4k-qd1', 'rand4k-qd16'],
  ckpt: ['ckpt-empty', 'ckpt-1m', 'ckpt-big'],
  checkpoint: ['ckpt-empty', 'ckpt-1m', 'ckpt-big'],
};

export interface BenchConfig {
  rounds: number;
  /** Seconds per time-based (random write) run. */
  runtime: number;
  /** Image size in bytes. */
  size: number;
  systems: SystemId[];
  workloads: WorkloadId[];
  /** Timed checkpoints per case, system and round. */
  checkpointReps: number;
  /** Where images go (tmpfs). */
  workDir: string;
  /** Results folder; default bench/results/<UTC stamp>. */
  outDir: string | null;
  keepWorkDir: boolean;
  quick: boolean;
  help: boolean;
}

export const USAGE = `usage: npm run bench:pair -- [options]     (or node dist/bench/pair.js [options])

  --quick              smoke run: 1 round, 3 s runtime, 64 MiB images
  --rounds N           rounds; every round runs each workload on each system in turn (BENCH_ROUNDS, default 3)
  --runtime S          seconds per random-write run (BENCH_RUNTIME, default 20)
  --size SIZE          image size, e.g. 256M (BENCH_SIZE, default 256M)
  --systems LIST       comma list of ${SYSTEM_IDS.join(', ')}
                       or pair, alone, nbd, colo-blk, qemu, stock, tuned, all (BENCH_SYSTEMS, default all)
  --workloads LIST     comma list of ${WORKLOAD_IDS.join(', ')}
                       or fio, ckpt, all (BENCH_WORKLOADS, default all)
  --ckpt-reps N        timed checkpoints per case, system and round (BENCH_CKPT_REPS, default 2)
  --dir PATH           folder for images, should be tmpfs (BENCH_DIR, default /dev/shm)
  --out PATH           results folder (BENCH_OUT, default bench/results/<UTC stamp>)
  --keep               keep the image folder afterwards (BENCH_KEEP=1)
`;

function expand<T extends string>(text: string, ids: readonly T[], aliases: Record<string, readonly T[]>, what: string): T[] {
  const out: T[] = [];
  for (const raw of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const ids2 = aliases[raw] ?? ((ids as readonly string[]).includes(raw) ? [raw as T] : null);
    if (!ids2) throw new Error(`unknown ${what} '${raw}' (known: ${[...ids, ...Object.keys(aliases)].join(', ')})`);
    for (const id of ids2) if (!out.includes(id)) out.push(id);
  }
  if (out.length === 0) throw new Error(`no ${what} selected`);
  // Keep the canonical order, whatever order they were named in.
  return ids.filter((id) => out.includes(id));
}

function positiveInt(text: string, what: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${what} must be a positive integer, not '${text}'`);
  return n;
}

export function parseConfig(argv: readonly string[], env: Readonly<Record<string, string | undefined>> = {}): BenchConfig {
  const flags = new Map<string, string>();
  const switches = new Set<string>();
  const takesValue = new Set(['--rounds', '--runtime', '--size', '--systems', '--workloads', '--ckpt-reps', '--dir', '--out']);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    if (takesValue.has(name)) {
      const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
      if (value === undefined) throw new Error(`${name} needs a value`);
      flags.set(name, value);
    } else if (['--quick', '--keep', '--help', '-h'].includes(arg)) {
      switches.add(arg === '-h' ? '--help' : arg);
    } else {
      throw new Error(`unknown option '${arg}'\n${USAGE}`);
    }
  }
  const get = (flag: string, envName: string): string | undefined => flags.get(flag) ?? (env[envName] || undefined);
  const quick = switches.has('--quick') || env.BENCH_QUICK === '1';
  const sizeText = get('--size', 'BENCH_SIZE');
  const size = sizeText === undefined ? (quick ? 64 << 20 : 256 << 20) : parseSize(sizeText);
  if (size === null || size < 16 << 20 || size % (1 << 20) !== 0) {
    throw new Error(`--size must be a whole number of MiB, at least 16M, not '${sizeText}'`);
  }
  const rounds = get('--rounds', 'BENCH_ROUNDS');
  const runtime = get('--runtime', 'BENCH_RUNTIME');
  const reps = get('--ckpt-reps', 'BENCH_CKPT_REPS');
  return {
    rounds: rounds === undefined ? (quick ? 1 : 3) : positiveInt(rounds, '--rounds'),
    runtime: runtime === undefined ? (quick ? 3 : 20) : positiveInt(runtime, '--runtime'),
    size,
    systems: expand(get('--systems', 'BENCH_SYSTEMS') ?? 'all', SYSTEM_IDS, SYSTEM_ALIASES, 'system'),
    workloads: expand(get('--workloads', 'BENCH_WORKLOADS') ?? 'all', WORKLOAD_IDS, WORKLOAD_ALIASES, 'workload'),
    checkpointReps: reps === undefined ? (quick ? 1 : 2) : positiveInt(reps, '--ckpt-reps'),
    workDir: get('--dir', 'BENCH_DIR') ?? '/dev/shm',
    outDir: get('--out', 'BENCH_OUT') ?? null,
    keepWorkDir: switches.has('--keep') || env.BENCH_KEEP === '1',
    quick,
    help: switches.has('--help'),
  };
}

/**
 * Bytes buffered for the big checkpoint case and for failover: 64 MiB in
 * hidden and 64 MiB in active as in the anchor, less on small images (the
 * layout needs three such regions).
 */
export function bufferedBytes(size: number): number {
  return Math.min(64 << 20, Math.floor(size / 4 / (1 << 20)) * (1 << 20));
}
