/**
 * QEMU systems, built over QMP exactly as the anchor built them
 * (/work/shared/anchors/qemu-colo/REPORT.md §2): a COLO pair of two
 * `qemu-system-x86_64 -M none` processes, and the primary alone (quorum over
 * the raw disk, no replication child). Stock or with the anchor's glibc
 * malloc tuning.
 */
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { SystemId } from './config.js';
import { copyImage, createColoOverlays } from './images.js';
import type { ManagedProcess } from './processes.js';
import { TracedQmp } from './qmp.js';
import {
  HOST, NotReplicatedError, TUNED_MALLOC_ENV, freePort, unexpectedExits,
  type CheckpointTiming, type FailoverTiming, type Group, type System, type SystemContext, type SystemProcess, type UnexpectedExit, type Variant,
} from './system.js';

const QEMU = 'qemu-system-x86_64';

/** One QEMU process with its QMP monitor. */
class QemuProcess {
  private recipe: { all: string[]; lines: string[]; who: string } | null = null;

  private constructor(readonly proc: ManagedProcess, readonly qmp: TracedQmp) {}

  /** Stops recording QMP commands; the recipe so far goes to the system's description. */
  endRecipe(): void {
    if (!this.recipe) return;
    this.qmp.recording = null;
    for (const l of this.recipe.lines) this.recipe.all.push(`  ${this.recipe.who} QMP: ${l}`);
    this.recipe = null;
  }

  /**
   * Starts QEMU and connects to its monitor, twice if need be: one full run
   * lost QEMU tuned for good to a single start-up whose monitor did not
   * greet, and one bad start is no reason to drop a system from the run.
   */
  static async start(ctx: SystemContext, who: string, env: Record<string, string> | undefined, recipe: string[]): Promise<QemuProcess> {
    try {
      return await QemuProcess.startOnce(ctx, who, env, recipe);
    } catch (err) {
      ctx.progress(`${who} QEMU: ${(err as Error).message}; starting it again`);
      return QemuProcess.startOnce(ctx, who, env, recipe);
    }
  }

  private static async startOnce(ctx: SystemContext, who: string, env: Record<string, string> | undefined, recipe: string[]): Promise<QemuProcess> {
    const sock = join(ctx.dir, `${who}.qmp`);
    const args = ['-name', who, '-M', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${sock},server=on,wait=off`];
    const proc = ctx.pm.spawn(`${ctx.dir.split('/').pop()}-${who}`, QEMU, args, { env });
    try {
      const qmp = await TracedQmp.connect(`${ctx.dir.split('/').pop()}/${who}`, sock, ctx.qmpTrace);
      recipe.push(proc.commandLine);
      const lines: string[] = [];
      qmp.recording = lines;
      const p = new QemuProcess(proc, qmp);
      p.recipe = { all: recipe, lines, who };
      return p;
    } catch (err) {
      await ctx.pm.stop(proc, { signal: 'SIGKILL' });
      throw new Error(`${who} QEMU did not start: ${(err as Error).message}; output: ${proc.tail()}`);
    }
  }

  /** nbd-server-start on a free port (retried if another process took the port meanwhile). */
  async startNbdServer(): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      try {
        await this.qmp.run('nbd-server-start', { addr: { type: 'inet', data: { host: HOST, port: String(port) } } });
        return port;
      } catch (err) {
        if (attempt >= 3 || !/in use/i.test((err as Error).message)) throw err;
      }
    }
  }

  async quit(ctx: SystemContext): Promise<void> {
    this.proc.expectExit();
    if (!this.proc.exited) {
      await this.qmp.run('quit').catch(() => undefined);
      await this.proc.waitExit(5000).catch(() => ctx.pm.stop(this.proc, { graceMs: 2000 }));
    }
    await this.qmp.close();
  }
}

function blockdevFile(nodeName: string, driver: 'raw' | 'qcow2', filename: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { driver, 'node-name': nodeName, file: { driver: 'file', filename }, ...extra };
}

/** The secondary's graph of REPORT.md §2: parent0 <- hidden0 <- active0 <- childs0 <- colo-disk0. */
export async function buildQemuSecondary(qmp: TracedQmp, dir: string): Promise<void> {
  await qmp.run('blockdev-add', blockdevFile('parent0', 'raw', join(dir, 'secondary.raw')));
  await qmp.run('blockdev-add', blockdevFile('hidden0', 'qcow2', join(dir, 'hidden.qcow2'), { backing: 'parent0' }));
  await qmp.run('blockdev-add', blockdevFile('active0', 'qcow2', join(dir, 'active.qcow2'), { backing: 'hidden0' }));
  await qmp.run('blockdev-add', { driver: 'replication', 'node-name': 'childs0', mode: 'secondary', 'top-id': 'colo-disk0', file: 'active0' });
  await qmp.run('blockdev-add', { driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['childs0'] });
}

async function exportSecondary(qmp: TracedQmp): Promise<void> {
  await qmp.run('nbd-server-add', { device: 'parent0', writable: true });
  await qmp.run('nbd-server-add', { device: 'colo-disk0', name: 'sec-top', writable: true });
}

/** The primary's quorum over its raw disk, exported as `pvm`; the replication child comes separately. */
async function buildQemuPrimary(qmp: TracedQmp, dir: string): Promise<void> {
  await qmp.run('blockdev-add', blockdevFile('primary-disk0', 'raw', join(dir, 'primary.raw')));
  await qmp.run('blockdev-add', { driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['primary-disk0'] });
  await qmp.run('nbd-server-add', { device: 'colo-disk0', name: 'pvm', writable: true });
}

async function addReplicationChild(qmp: TracedQmp, secondaryPort: number): Promise<void> {
  await qmp.run('blockdev-add', {
    driver: 'replication', 'node-name': 'replication0', mode: 'primary',
    file: { driver: 'nbd', server: { type: 'inet', host: HOST, port: String(secondaryPort) }, export: 'parent0' },
  });
  await qmp.run('x-blockdev-change', { parent: 'colo-disk0', node: 'replication0' });
}

async function expectReplicationHealthy(qmp: TracedQmp, who: string): Promise<void> {
  const st = await qmp.run<{ error: boolean; desc?: string }>('query-xen-replication-status');
  if (st.error) throw new Error(`${who}: replication reports an error: ${st.desc ?? '(no description)'}`);
}

abstract class QemuSystem implements System {
  abstract readonly group: Group;
  abstract readonly replicated: boolean;
  readonly variant: Variant;
  protected primary: QemuProcess | null = null;
  protected primaryPort = 0;
  /** Command lines and the QMP commands of the set-up, in order. */
  protected readonly recipe: string[] = [];

  constructor(readonly id: SystemId, protected readonly ctx: SystemContext, tuned: boolean) {
    this.variant = tuned ? 'tuned' : 'stock';
  }

  protected get env(): Record<string, string> | undefined {
    return this.variant === 'tuned' ? { ...TUNED_MALLOC_ENV } : undefined;
  }

  abstract start(): Promise<void>;
  abstract stop(): Promise<void>;

  pvmUri(): string {
    return `nbd://${HOST}:${this.primaryPort}/pvm`;
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
    return this.primary && !this.primary.proc.exited ? [{ role: 'primary', pid: this.primary.proc.pid }] : [];
  }

  unexpectedExits(): UnexpectedExit[] {
    return unexpectedExits([['primary', this.primary?.proc]]);
  }

  async checkHealth(): Promise<void> {
    if (!this.primary || this.primary.proc.exited) throw new Error(`${this.id}: the primary QEMU is not running (${this.primary?.proc.tail() ?? 'never started'})`);
  }

  disks(): { primary: string; secondary?: string } {
    return { primary: join(this.ctx.dir, 'primary.raw') };
  }

  describe(): string[] {
    return this.recipe.map((l) => l.replaceAll(this.ctx.dir, 'DIR').replace(/"port":"\d+"/g, '"port":"PORT"'));
  }
}

/** QEMU primary alone: quorum over the raw disk, no replication child. */
export class QemuAlone extends QemuSystem {
  readonly group = 'alone' as const;
  readonly replicated = false;

  async start(): Promise<void> {
    copyImage(this.ctx.baseImage, join(this.ctx.dir, 'primary.raw'));
    this.primary = await QemuProcess.start(this.ctx, 'primary', this.env, this.recipe);
    this.primaryPort = await this.primary.startNbdServer();
    await buildQemuPrimary(this.primary.qmp, this.ctx.dir);
    this.primary.endRecipe();
  }

  async stop(): Promise<void> {
    await this.primary?.quit(this.ctx);
  }
}

/** The QEMU COLO pair of the anchor. */
export class QemuPair extends QemuSystem {
  readonly group = 'pair' as const;
  readonly replicated = true;
  private secondary: QemuProcess | null = null;
  private secondaryPort = 0;

  async start(): Promise<void> {
    const d = this.ctx.dir;
    copyImage(this.ctx.baseImage, join(d, 'primary.raw'));
    copyImage(this.ctx.baseImage, join(d, 'secondary.raw'));
    createColoOverlays(join(d, 'secondary.raw'), join(d, 'hidden.qcow2'), join(d, 'active.qcow2'), this.ctx.size, this.ctx.commandLog);
    this.secondary = await QemuProcess.start(this.ctx, 'secondary', this.env, this.recipe);
    await buildQemuSecondary(this.secondary.qmp, d);
    this.secondaryPort = await this.secondary.startNbdServer();
    await exportSecondary(this.secondary.qmp);
    this.secondary.endRecipe();
    this.primary = await QemuProcess.start(this.ctx, 'primary', this.env, this.recipe);
    this.primaryPort = await this.primary.startNbdServer();
    await buildQemuPrimary(this.primary.qmp, d);
    await addReplicationChild(this.primary.qmp, this.secondaryPort);
    this.primary.endRecipe();
    // Secondary first, then primary (COLO-FT.txt's order).
    await this.secondary.qmp.run('xen-set-replication', { enable: true, primary: false });
    await this.primary.qmp.run('xen-set-replication', { enable: true, primary: true });
    this.recipe.push('  secondary QMP: {"execute":"xen-set-replication","arguments":{"enable":true,"primary":false}}');
    this.recipe.push('  primary QMP: {"execute":"xen-set-replication","arguments":{"enable":true,"primary":true}}');
    await this.checkHealth();
  }

  async stop(): Promise<void> {
    await this.primary?.quit(this.ctx);
    await this.secondary?.quit(this.ctx);
  }

  override svmUri(): string {
    return `nbd://${HOST}:${this.secondaryPort}/sec-top`;
  }

  override async checkpoint(): Promise<CheckpointTiming> {
    // COLO's order (migration/colo.c): the primary's replication checkpoint, then the secondary's.
    const p = await this.pri().qmp.timed('xen-colo-do-checkpoint');
    const s = await this.sec().qmp.timed('xen-colo-do-checkpoint');
    return { secondaryMs: s.ms, primaryMs: p.ms };
  }

  override async killPrimary(): Promise<void> {
    const p = this.pri();
    p.proc.signal('SIGKILL');
    await p.proc.waitExit(10_000);
    await p.qmp.close();
    // The anchor's step: the secondary stops serving the replication target, keeps sec-top.
    await this.sec().qmp.run('nbd-server-remove', { name: 'parent0', mode: 'hard' });
  }

  /**
   * The commit job is internal (no job list, no events; REPORT.md §5.4), so
   * the end of the commit is seen in the graph: the mirror_top filter node
   * disappears. Polled every millisecond, as the anchor did.
   */
  override async failover(): Promise<FailoverTiming> {
    const qmp = this.sec().qmp;
    const t0 = performance.now();
    await qmp.run('xen-set-replication', { enable: false, primary: false, failover: true });
    const commandMs = performance.now() - t0;
    const done = (async (): Promise<{ ms: number; via: string }> => {
      for (;;) {
        const nodes = await qmp.quiet<Array<{ drv: string }>>('query-named-block-nodes', { flat: true });
        if (!nodes.some((n) => n.drv === 'mirror_top' || n.drv === 'commit_top')) return { ms: performance.now() - t0, via: 'graph poll (1 ms)' };
        if (performance.now() - t0 > 300_000) throw new Error(`${this.id}: the failover commit did not finish in 300 s`);
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    })();
    return { t0, commandMs, done };
  }

  override unexpectedExits(): UnexpectedExit[] {
    return unexpectedExits([['primary', this.primary?.proc], ['secondary', this.secondary?.proc]]);
  }

  override pids(): SystemProcess[] {
    const out = super.pids();
    if (this.secondary && !this.secondary.proc.exited) out.push({ role: 'secondary', pid: this.secondary.proc.pid });
    return out;
  }

  override async checkHealth(): Promise<void> {
    await super.checkHealth();
    const s = this.sec();
    if (s.proc.exited) throw new Error(`${this.id}: the secondary QEMU exited: ${s.proc.tail()}`);
    await expectReplicationHealthy(s.qmp, `${this.id} secondary`);
    await expectReplicationHealthy(this.pri().qmp, `${this.id} primary`);
  }

  override disks(): { primary: string; secondary?: string } {
    return { primary: join(this.ctx.dir, 'primary.raw'), secondary: join(this.ctx.dir, 'secondary.raw') };
  }

  private pri(): QemuProcess {
    if (!this.primary) throw new Error(`${this.id} is not started`);
    return this.primary;
  }

  private sec(): QemuProcess {
    if (!this.secondary) throw new Error(`${this.id} is not started`);
    return this.secondary;
  }
}
