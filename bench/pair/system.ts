/**
 * One interface for every system the harness measures: a replicated pair
 * (colo-blk or QEMU), a primary alone, or a plain NBD export. Throughput
 * workloads use start/stop/pvmUri/pids; checkpoint and failover workloads
 * need a replicated system (`replicated` is true) and also use svmUri,
 * checkpoint, killPrimary and failover.
 */
import { createServer } from 'node:net';
import type { Group, SystemId, Variant } from './config.js';
import type { ExitStatus, ManagedProcess, ProcessManager } from './processes.js';

export type { Group, Variant };

export interface SystemProcess {
  /** `primary`, `secondary` or `server`. */
  role: string;
  pid: number;
}

export interface CheckpointTiming {
  /** QMP round trip of xen-colo-do-checkpoint on the secondary (the measurement). */
  secondaryMs: number;
  /** The same on the primary, issued after the secondary's returned. */
  primaryMs: number;
}

export interface FailoverTiming {
  /** performance.now() just before the failover command was sent. */
  t0: number;
  /** Round trip of the failover command. */
  commandMs: number;
  /** Resolves with the milliseconds from t0 to the end of the commit, and how the end was seen. */
  done: Promise<{ ms: number; via: string }>;
}

export interface System {
  readonly id: SystemId;
  readonly group: Group;
  readonly variant: Variant;
  readonly replicated: boolean;
  start(): Promise<void>;
  /** Stops every process of the system; safe to call twice or after a failed start. */
  stop(): Promise<void>;
  /** The export the "guest" writes to (the primary's). */
  pvmUri(): string;
  /** The secondary VM's view (replicated systems). */
  svmUri(): string;
  checkpoint(): Promise<CheckpointTiming>;
  /** The primary dies (SIGKILL) and the secondary stops taking replication writes (untimed). */
  killPrimary(): Promise<void>;
  /** Sends the failover command to the secondary. */
  failover(): Promise<FailoverTiming>;
  /** Live processes and their roles. */
  pids(): SystemProcess[];
  /** Processes that exited without the harness asking them to, and how. */
  unexpectedExits(): UnexpectedExit[];
  /** Throws when a process died or replication latched an error. */
  checkHealth(): Promise<void>;
  /** Disk files: the primary's (the export's) and, for pairs, the secondary's. */
  disks(): { primary: string; secondary?: string };
  /** The exact command lines and QMP recipe, for the report. */
  describe(): string[];
}

export interface UnexpectedExit {
  role: string;
  status: ExitStatus;
}

/** The unexpected exits among a system's processes. */
export function unexpectedExits(procs: ReadonlyArray<[role: string, proc: ManagedProcess | null | undefined]>): UnexpectedExit[] {
  const out: UnexpectedExit[] = [];
  for (const [role, proc] of procs) {
    const st = proc?.unexpectedExit;
    if (st) out.push({ role, status: st });
  }
  return out;
}

export interface SystemContext {
  pm: ProcessManager;
  /** This system's own folder (images, sockets). */
  dir: string;
  /** The random image every disk starts as. */
  baseImage: string;
  size: number;
  qmpTrace: string;
  commandLog: string;
  progress(line: string): void;
}

export const HOST = '127.0.0.1';

/** A TCP port that was free a moment ago (bind port 0, read it, release it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => (port ? resolve(port) : reject(new Error('could not find a free port'))));
    });
  });
}

/** glibc tunables of the anchor's §5.1: 1 MiB request buffers stay on the heap. */
export const TUNED_MALLOC_ENV: Readonly<Record<string, string>> = {
  GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=67108864',
};

export class NotReplicatedError extends Error {
  constructor(id: string, what: string) {
    super(`${id} is not a replicated system: no ${what}`);
  }
}
