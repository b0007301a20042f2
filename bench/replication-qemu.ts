/**
 * A QEMU 7.2 COLO secondary driven over QMP: the layout of the qemu-colo
 * anchor (raw secondary disk, qcow2 hidden and active disks on tmpfs, NBD
 * exports of the secondary disk and of the replication node), written with
 * qemu-io over NBD. The peer of bench/replication.ts (checkpoint time) and
 * of the differential test (same operations, same bytes).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { QmpClient } from '../src/control/qmp-client.js';

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
}

export class QemuSecondary {
  private constructor(
    private readonly proc: ChildProcess,
    readonly qmp: QmpClient,
    private readonly nbdSocket: string,
    private readonly dir: string,
  ) {}

  static readonly command = 'qemu-system-x86_64 -M none -nodefaults -display none -qmp unix:<dir>/qemu.qmp,server=on,wait=off';

  static async start(dir: string, size: number): Promise<QemuSecondary> {
    const qmpPath = join(dir, 'qemu.qmp');
    const nbdSocket = join(dir, 'qemu-nbd.sock');
    run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'secondary.raw'), String(size)]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'hidden.qcow2'), String(size)]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'active.qcow2'), String(size)]);
    const proc = spawn('qemu-system-x86_64', ['-M', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${qmpPath},server=on,wait=off`], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let qmp: QmpClient;
    try {
      qmp = await QmpClient.connect(qmpPath, { waitMs: 10_000 });
    } catch (err) {
      proc.kill('SIGKILL');
      throw err;
    }
    const q = new QemuSecondary(proc, qmp, nbdSocket, dir);
    const file = (name: string) => ({ driver: 'file', filename: join(dir, name) });
    await qmp.execute('blockdev-add', { driver: 'raw', 'node-name': 'parent0', file: file('secondary.raw') });
    await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'hidden0', file: file('hidden.qcow2'), backing: 'parent0' });
    await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'active0', file: file('active.qcow2'), backing: 'hidden0' });
    await qmp.execute('blockdev-add', { driver: 'replication', 'node-name': 'childs0', mode: 'secondary', 'top-id': 'childs0', file: 'active0' });
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSocket } } });
    await qmp.execute('nbd-server-add', { device: 'parent0', writable: true });
    await qmp.execute('nbd-server-add', { device: 'childs0', name: 'top', writable: true });
    await qmp.execute('xen-set-replication', { enable: true, primary: false });
    return q;
  }

  /** A write as the primary sends it: into the secondary disk's export (copy-before-write fills hidden). */
  primaryWrite(offset: number, length: number, pattern = 0x5a): void {
    this.qemuIo('parent0', `write -P ${pattern} ${offset} ${length}`);
  }

  /** A write of the secondary VM: into the replication node (fills active). */
  viewWrite(offset: number, length: number, pattern = 0x5a): void {
    this.qemuIo('top', `write -P ${pattern} ${offset} ${length}`);
  }

  /** The whole content of an export ('parent0': the secondary disk; 'top': the secondary VM's view). */
  readExport(name: 'parent0' | 'top', tag: string): Buffer {
    const out = join(this.dir, `${name}-${tag}.raw`);
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', `nbd+unix:///${name}?socket=${this.nbdSocket}`, out]);
    return readFileSync(out);
  }

  /** Failover (QMP's error-swallowing form), then waits for the commit's filter to leave the graph. */
  async failover(): Promise<void> {
    await this.qmp.execute('xen-set-replication', { enable: false, primary: false, failover: true });
    // QEMU's commit is an internal job: no event, no query-jobs entry. Poll the graph, as the anchor does.
    for (let i = 0; i < 10_000; i++) {
      const nodes = await this.qmp.execute<Array<{ drv: string }>>('query-named-block-nodes');
      if (!nodes.some((n) => n.drv === 'mirror_top')) return;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    throw new Error('QEMU failover commit did not finish');
  }

  /** One `xen-colo-do-checkpoint` QMP round trip, in ms. */
  async checkpoint(): Promise<number> {
    const t0 = performance.now();
    await this.qmp.execute('xen-colo-do-checkpoint');
    return performance.now() - t0;
  }

  async close(): Promise<void> {
    try {
      await this.qmp.execute('quit');
    } catch {
      // It may close before answering.
    }
    await this.qmp.close().catch(() => undefined);
    if (this.proc.exitCode === null) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
        this.proc.once('exit', () => { clearTimeout(timer); resolve(); });
      });
    }
  }

  private qemuIo(exportName: string, command: string): void {
    run('qemu-io', ['-f', 'raw', '-c', command, `nbd+unix:///${exportName}?socket=${this.nbdSocket}`]);
  }
}
