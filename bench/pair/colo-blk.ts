/**
 * colo-blk systems: the replicated pair (`colo-blk secondary` +
 * `colo-blk primary`, driven over QMP with QEMU's command names), the
 * primary alone (`colo-blk daemon` exporting the same quorum over the raw
 * disk that QEMU's primary exports), and a plain NBD export of the raw disk
 * (`colo-blk daemon`, the counterpart of qemu-nbd).
 *
 * `coloBlkAvailability` says which of them this build can run: the pair
 * commands and the daemon land on main separately; a system whose command
 * is missing is skipped with the reason.
 */
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { NODE_FLAGS } from '../../src/cli/node-flags.js';
import type { SystemId } from './config.js';
import { copyImage, createColoOverlays } from './images.js';
import { waitForNbd } from './nbd-client.js';
import type { ManagedProcess } from './processes.js';
import { TracedQmp } from './qmp.js';
import {
  HOST, NotReplicatedError, freePort, unexpectedExits,
  type CheckpointTiming, type FailoverTiming, type Group, type System, type SystemContext, type SystemProcess, type UnexpectedExit,
} from './system.js';

/** This build's CLI, or another build's (`COLO_BLK_CLI=/path/to/dist/src/cli/main.js`, to compare builds). */
export const COLO_BLK_CLI = process.env.COLO_BLK_CLI
  ? resolve(process.env.COLO_BLK_CLI)
  : fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** colo-blk logs one JSON line per event; at info level the connection chatter is noise in a benchmark. */
const COLO_ENV = { COLO_BLK_LOG_LEVEL: process.env.BENCH_COLO_LOG_LEVEL ?? 'warn' };

function subcommandWorks(sub: string): boolean {
  const r = spawnSync(process.execPath, [COLO_BLK_CLI, sub, '--help'], { stdio: 'ignore', timeout: 20_000 });
  return r.status === 0;
}

/** Per group: null when colo-blk can run it, else why not. */
export function coloBlkAvailability(): Record<Group, string | null> {
  const pair = subcommandWorks('secondary') && subcommandWorks('primary')
    ? null
    : "'colo-blk primary' / 'colo-blk secondary' are not in this build (issue 5; git merge main once they land)";
  const daemon = subcommandWorks('daemon');
  const hasQuorum = hasDriver('quorum');
  const nbd = daemon ? null : "'colo-blk daemon' is not in this build (nbd branch; git merge main once it lands)";
  const alone = !daemon ? nbd : hasQuorum ? null : 'the quorum driver is not in this build (replication branch)';
  return { pair, alone, nbd };
}

/** Asks the build the CLI belongs to whether it registers a block driver. */
function hasDriver(name: string): boolean {
  const drivers = pathToFileURL(join(dirname(COLO_BLK_CLI), '..', 'drivers', 'index.js')).href;
  const probe = `import(${JSON.stringify(drivers)}).then((m) => process.exit(m.builtinDrivers.some((d) => d.name === ${JSON.stringify(name)}) ? 0 : 1), () => process.exit(2));`;
  return spawnSync(process.execPath, ['--input-type=module', '-e', probe], { stdio: 'ignore', timeout: 20_000 }).status === 0;
}

function nodeArgs(sub: string, args: string[]): string[] {
  return [...NODE_FLAGS, COLO_BLK_CLI, sub, ...args];
}

/** A colo-blk process and, when it has one, its QMP monitor. */
class ColoProcess {
  private constructor(readonly proc: ManagedProcess, readonly qmp: TracedQmp | null) {}

  static async start(ctx: SystemContext, who: string, sub: string, args: string[], qmpSocket: string | null): Promise<ColoProcess> {
    const proc = ctx.pm.spawn(`${ctx.dir.split('/').pop()}-${who}`, process.execPath, nodeArgs(sub, args), { env: COLO_ENV });
    if (!qmpSocket) return new ColoProcess(proc, null);
    try {
      const qmp = await Promise.race([
        TracedQmp.connect(`${ctx.dir.split('/').pop()}/${who}`, qmpSocket, ctx.qmpTrace),
        proc.waitExit().then((st) => { throw new Error(`exited with ${st.signal ?? st.code}`); }),
      ]);
      return new ColoProcess(proc, qmp);
    } catch (err) {
      await ctx.pm.stop(proc, { signal: 'SIGKILL' });
      throw new Error(`colo-blk ${sub} did not start: ${(err as Error).message}; output: ${proc.tail()}`);
    }
  }

  get monitor(): TracedQmp {
    if (!this.qmp) throw new Error('this colo-blk process has no QMP monitor');
    return this.qmp;
  }

  async stop(ctx: SystemContext): Promise<void> {
    await this.qmp?.close();
    // SIGTERM: the daemon finishes requests in flight, flushes and closes its images.
    await ctx.pm.stop(this.proc, { graceMs: 10_000 });
  }
}

interface ReplicationStatus {
  'node-name': string;
  mode: 'primary' | 'secondary';
  stage: string;
  errors: Array<{ disk: string; operation: string; 'errno-name'?: string; desc: string }>;
  commit?: { status: string; offset: number; len: number; error?: string };
}

async function replicationStatus(qmp: TracedQmp): Promise<ReplicationStatus[]> {
  return qmp.run<ReplicationStatus[]>('x-colo-blk-query-replication');
}

function describeErrors(st: ReplicationStatus[]): string | null {
  const errs = st.flatMap((n) => n.errors.map((e) => `${n['node-name']}: ${e.operation} on ${e.disk}: ${e['errno-name'] ?? ''} ${e.desc}`));
  return errs.length ? errs.join('; ') : null;
}

/** colo-blk primary + secondary. */
export class ColoPair implements System {
  readonly group = 'pair' as const;
  readonly variant = 'colo-blk' as const;
  readonly replicated = true;
  private primary: ColoProcess | null = null;
  private secondary: ColoProcess | null = null;
  private primaryPort = 0;
  private secondaryPort = 0;
  private readonly commands: string[] = [];

  constructor(readonly id: SystemId, private readonly ctx: SystemContext) {}

  async start(): Promise<void> {
    const d = this.ctx.dir;
    copyImage(this.ctx.baseImage, join(d, 'primary.raw'));
    copyImage(this.ctx.baseImage, join(d, 'secondary.raw'));
    createColoOverlays(join(d, 'secondary.raw'), join(d, 'hidden.qcow2'), join(d, 'active.qcow2'), this.ctx.size, this.ctx.commandLog);
    this.secondaryPort = await freePort();
    this.secondary = await ColoProcess.start(this.ctx, 'secondary', 'secondary', [
      '--disk', join(d, 'secondary.raw'), '--active', join(d, 'active.qcow2'), '--hidden', join(d, 'hidden.qcow2'),
      '--listen', `${HOST}:${this.secondaryPort}`, '--qmp', join(d, 'secondary.qmp'),
    ], join(d, 'secondary.qmp'));
    this.commands.push(this.secondary.proc.commandLine);
    await waitForNbd(this.svmUri(), 15_000, () => !this.secondary!.proc.exited);
    this.primaryPort = await freePort();
    this.primary = await ColoProcess.start(this.ctx, 'primary', 'primary', [
      '--disk', join(d, 'primary.raw'), '--secondary', `nbd://${HOST}:${this.secondaryPort}/parent0`,
      '--listen', `${HOST}:${this.primaryPort}`, '--qmp', join(d, 'primary.qmp'),
    ], join(d, 'primary.qmp'));
    this.commands.push(this.primary.proc.commandLine);
    await waitForNbd(this.pvmUri(), 15_000, () => !this.primary!.proc.exited);
    // Start replication where the command did not already: secondary first, then primary.
    for (const [p, primary] of [[this.secondary, false], [this.primary, true]] as const) {
      const st = await replicationStatus(p.monitor);
      if (st.length === 0) throw new Error(`${this.id}: ${primary ? 'primary' : 'secondary'} has no replication node`);
      if (st.every((n) => n.stage === 'none')) await p.monitor.run('xen-set-replication', { enable: true, primary });
    }
    await this.checkHealth();
  }

  async stop(): Promise<void> {
    await this.primary?.stop(this.ctx);
    await this.secondary?.stop(this.ctx);
  }

  pvmUri(): string {
    return `nbd://${HOST}:${this.primaryPort}/pvm`;
  }

  svmUri(): string {
    return `nbd://${HOST}:${this.secondaryPort}/svm`;
  }

  async checkpoint(): Promise<CheckpointTiming> {
    // COLO's order (migration/colo.c): the primary's replication checkpoint, then the secondary's.
    const p = await this.pri().monitor.timed('xen-colo-do-checkpoint');
    const s = await this.sec().monitor.timed('xen-colo-do-checkpoint');
    return { secondaryMs: s.ms, primaryMs: p.ms };
  }

  async killPrimary(): Promise<void> {
    const p = this.pri();
    p.proc.signal('SIGKILL');
    await p.proc.waitExit(10_000);
    await p.qmp?.close();
    await this.sec().monitor.run('nbd-server-remove', { name: 'parent0', mode: 'hard' });
  }

  /**
   * The end of the commit is announced by COLO_BLK_REPLICATION_STAGE (stage
   * done, or failover-failed); the arrival time is taken in the listener,
   * so an event that beats the command's reply is timed right. A slow poll
   * of x-colo-blk-query-replication backs it up.
   */
  async failover(): Promise<FailoverTiming> {
    const qmp = this.sec().monitor;
    type Outcome = { ms: number; via: string } | { error: string };
    let result: Outcome | null = null;
    let resolveOutcome: (r: Outcome) => void = () => undefined;
    const outcome = new Promise<Outcome>((resolve) => { resolveOutcome = resolve; });
    const settle = (r: Outcome): void => {
      if (result) return;
      result = r;
      resolveOutcome(r);
    };
    let t0 = 0;
    const unsubscribe = qmp.client.onEvent((ev) => {
      if (ev.event !== 'COLO_BLK_REPLICATION_STAGE') return;
      const data = ev.data as { stage?: string; mode?: string };
      if (data.mode !== 'secondary') return;
      if (data.stage === 'done') settle({ ms: performance.now() - t0, via: 'event' });
      else if (data.stage === 'failover-failed') settle({ error: 'the failover commit failed (stage failover-failed)' });
    });
    t0 = performance.now();
    try {
      await qmp.run('xen-set-replication', { enable: false, primary: false, failover: true });
    } catch (err) {
      unsubscribe();
      throw err;
    }
    const commandMs = performance.now() - t0;
    void (async () => {
      while (!result) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        if (result) return;
        const st = await qmp.quiet<ReplicationStatus[]>('x-colo-blk-query-replication').catch(() => null);
        const sec = st?.find((n) => n.mode === 'secondary');
        if (sec?.stage === 'done') settle({ ms: performance.now() - t0, via: 'query poll (50 ms)' });
        else if (sec?.stage === 'failover-failed') settle({ error: `the failover commit failed: ${sec.commit?.error ?? describeErrors(st!) ?? ''}` });
        else if (performance.now() - t0 > 300_000) settle({ error: 'the failover commit did not finish in 300 s' });
      }
    })();
    const done = outcome.then((r) => {
      unsubscribe();
      if ('error' in r) throw new Error(`${this.id}: ${r.error}`);
      return r;
    });
    return { t0, commandMs, done };
  }

  pids(): SystemProcess[] {
    const out: SystemProcess[] = [];
    if (this.primary && !this.primary.proc.exited) out.push({ role: 'primary', pid: this.primary.proc.pid });
    if (this.secondary && !this.secondary.proc.exited) out.push({ role: 'secondary', pid: this.secondary.proc.pid });
    return out;
  }

  unexpectedExits(): UnexpectedExit[] {
    return unexpectedExits([['primary', this.primary?.proc], ['secondary', this.secondary?.proc]]);
  }

  async checkHealth(): Promise<void> {
    for (const [who, p] of [['primary', this.primary], ['secondary', this.secondary]] as const) {
      if (!p || p.proc.exited) throw new Error(`${this.id}: the ${who} is not running: ${p?.proc.tail() ?? 'never started'}`);
      const st = await replicationStatus(p.monitor);
      const errors = describeErrors(st);
      if (errors) throw new Error(`${this.id} ${who}: replication latched errors: ${errors}`);
      const notRunning = st.filter((n) => n.stage !== 'running');
      if (notRunning.length) throw new Error(`${this.id} ${who}: replication is not running (stage ${notRunning.map((n) => n.stage).join(', ')})`);
    }
  }

  disks(): { primary: string; secondary?: string } {
    return { primary: join(this.ctx.dir, 'primary.raw'), secondary: join(this.ctx.dir, 'secondary.raw') };
  }

  describe(): string[] {
    return this.commands.map((c) => c.replaceAll(this.ctx.dir, 'DIR').replace(/:\d+(?=[ /]|$)/g, ':PORT'));
  }

  private pri(): ColoProcess {
    if (!this.primary) throw new Error(`${this.id} is not started`);
    return this.primary;
  }

  private sec(): ColoProcess {
    if (!this.secondary) throw new Error(`${this.id} is not started`);
    return this.secondary;
  }
}

/**
 * `colo-blk daemon` exporting one node: for `alone`, the quorum over the
 * raw disk that QEMU's primary exports as `pvm` (no replication child); for
 * `nbd`, the raw disk itself, like qemu-nbd.
 */
export class ColoDaemon implements System {
  readonly variant = 'colo-blk' as const;
  readonly replicated = false;
  private proc: ColoProcess | null = null;
  private port = 0;

  constructor(readonly id: SystemId, readonly group: Exclude<Group, 'pair'>, private readonly ctx: SystemContext) {}

  private get exportName(): string {
    return this.group === 'alone' ? 'pvm' : 'disk';
  }

  private get image(): string {
    return join(this.ctx.dir, this.group === 'alone' ? 'primary.raw' : 'disk.raw');
  }

  async start(): Promise<void> {
    copyImage(this.ctx.baseImage, this.image);
    const raw = { driver: 'raw', 'node-name': 'primary-disk0', file: { driver: 'file', filename: this.image } };
    const blockdevs = [JSON.stringify(raw)];
    let exported = 'primary-disk0';
    if (this.group === 'alone') {
      blockdevs.push(JSON.stringify({ driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['primary-disk0'] }));
      exported = 'colo-disk0';
    }
    for (let attempt = 1; ; attempt++) {
      this.port = await freePort();
      const args = [
        ...blockdevs.flatMap((b) => ['--blockdev', b]),
        '--nbd-server', `addr.type=inet,addr.host=${HOST},addr.port=${this.port}`,
        '--export', `type=nbd,id=e0,node-name=${exported},name=${this.exportName},writable=on`,
      ];
      const p = await ColoProcess.start(this.ctx, 'daemon', 'daemon', args, null);
      try {
        await waitForNbd(this.pvmUri(), 15_000, () => !p.proc.exited);
        this.proc = p;
        return;
      } catch (err) {
        await p.stop(this.ctx);
        if (attempt >= 3 || !/in use/i.test(p.proc.tail())) throw new Error(`${(err as Error).message}; colo-blk daemon: ${p.proc.tail()}`);
      }
    }
  }

  async stop(): Promise<void> {
    await this.proc?.stop(this.ctx);
  }

  pvmUri(): string {
    return `nbd://${HOST}:${this.port}/${this.exportName}`;
  }

  svmUri(): string {
    throw new NotReplicatedError(this.id, 'secondary view');
  }

  checkpoint(): Promise<CheckpointTiming> {
    return Promise.reject(new NotReplicatedError(this.id, 'checkpoint'));
  }

  killPrimary(): Promise<void> {
    return Promise.reject(new NotReplicatedError(this.id, 'failover'));
  }

  failover(): Promise<FailoverTiming> {
    return Promise.reject(new NotReplicatedError(this.id, 'failover'));
  }

  pids(): SystemProcess[] {
    return this.proc && !this.proc.proc.exited ? [{ role: this.group === 'alone' ? 'primary' : 'server', pid: this.proc.proc.pid }] : [];
  }

  unexpectedExits(): UnexpectedExit[] {
    return unexpectedExits([[this.group === 'alone' ? 'primary' : 'server', this.proc?.proc]]);
  }

  async checkHealth(): Promise<void> {
    if (!this.proc || this.proc.proc.exited) throw new Error(`${this.id}: colo-blk daemon is not running: ${this.proc?.proc.tail() ?? 'never started'}`);
  }

  disks(): { primary: string } {
    return { primary: this.image };
  }

  describe(): string[] {
    return this.proc ? [this.proc.proc.commandLine.replaceAll(this.ctx.dir, 'DIR').replace(/addr\.port=\d+/, 'addr.port=PORT')] : [];
  }
}
