/**
 * QEMU 7.2 COLO peers driven over QMP, with the qemu-colo anchor's layouts:
 *
 *  - QemuSecondary: raw secondary disk, qcow2 hidden and active disks in
 *    tmpfs, NBD exports of the secondary disk (`parent0`, the replication
 *    target) and of the replication node (`top`, the secondary VM's view).
 *  - QemuPrimary: quorum (fifo, threshold 1) over a raw disk, exported as
 *    `pvm` for the guest's writes, plus a primary replication child over
 *    NBD to a secondary (colo-blk's or QEMU's).
 *
 * Guest writes go in with qemu-io over NBD. Used by bench/replication.ts
 * (checkpoint time) and by the differential and cross-implementation tests.
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

/**
 * Runs a tool without blocking the event loop: this process may be the NBD
 * server on the tool's data path (a QEMU primary writing into colo-blk).
 */
function runAsync(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr}`));
    });
  });
}

/** One `qemu-system-x86_64 -M none` process with a QMP socket and an NBD server. */
class QemuProcess {
  static readonly command = 'qemu-system-x86_64 -M none -nodefaults -display none -qmp unix:<dir>/<name>.qmp,server=on,wait=off';

  protected constructor(
    private readonly proc: ChildProcess,
    readonly qmp: QmpClient,
    /** This process's NBD server socket. */
    readonly nbdSocket: string,
    protected readonly dir: string,
  ) {}

  protected static async launch(dir: string, name: string): Promise<{ proc: ChildProcess; qmp: QmpClient; nbdSocket: string }> {
    const qmpPath = join(dir, `${name}.qmp`);
    const proc = spawn('qemu-system-x86_64', ['-M', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${qmpPath},server=on,wait=off`], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    try {
      const qmp = await QmpClient.connect(qmpPath, { waitMs: 10_000 });
      const nbdSocket = join(dir, `${name}-nbd.sock`);
      await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSocket } } });
      return { proc, qmp, nbdSocket };
    } catch (err) {
      proc.kill('SIGKILL');
      throw err;
    }
  }

  protected file(name: string): { driver: string; filename: string } {
    return { driver: 'file', filename: join(this.dir, name) };
  }

  /** One `xen-colo-do-checkpoint` QMP round trip, in ms. */
  async checkpoint(): Promise<number> {
    const t0 = performance.now();
    await this.qmp.execute('xen-colo-do-checkpoint');
    return performance.now() - t0;
  }

  /** The whole content of one of this process's exports. */
  async readExport(name: string, tag: string): Promise<Buffer> {
    const out = join(this.dir, `${name}-${tag}.raw`);
    await runAsync('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', `nbd+unix:///${name}?socket=${this.nbdSocket}`, out]);
    return readFileSync(out);
  }

  async close(): Promise<void> {
    try {
      await this.qmp.execute('quit');
    } catch {
      // It may close before answering.
    }
    await this.qmp.close().catch(() => undefined);
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
        this.proc.once('exit', () => { clearTimeout(timer); resolve(); });
      });
    }
  }

  protected qemuIo(exportName: string, command: string): Promise<void> {
    return runAsync('qemu-io', ['-f', 'raw', '-c', command, `nbd+unix:///${exportName}?socket=${this.nbdSocket}`]);
  }
}

export class QemuSecondary extends QemuProcess {
  static override readonly command = QemuProcess.command;

  static async start(dir: string, size: number): Promise<QemuSecondary> {
    run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'secondary.raw'), String(size)]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'hidden.qcow2'), String(size)]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'active.qcow2'), String(size)]);
    const { proc, qmp, nbdSocket } = await QemuProcess.launch(dir, 'secondary');
    const q = new QemuSecondary(proc, qmp, nbdSocket, dir);
    try {
      await qmp.execute('blockdev-add', { driver: 'raw', 'node-name': 'parent0', file: q.file('secondary.raw') });
      await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'hidden0', file: q.file('hidden.qcow2'), backing: 'parent0' });
      await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'active0', file: q.file('active.qcow2'), backing: 'hidden0' });
      await qmp.execute('blockdev-add', { driver: 'replication', 'node-name': 'childs0', mode: 'secondary', 'top-id': 'childs0', file: 'active0' });
      await qmp.execute('nbd-server-add', { device: 'parent0', writable: true });
      await qmp.execute('nbd-server-add', { device: 'childs0', name: 'top', writable: true });
      await qmp.execute('xen-set-replication', { enable: true, primary: false });
    } catch (err) {
      await q.close();
      throw err;
    }
    return q;
  }

  /** A write as the primary sends it: into the secondary disk's export (copy-before-write fills hidden). */
  primaryWrite(offset: number, length: number, pattern = 0x5a): Promise<void> {
    return this.qemuIo('parent0', `write -P ${pattern} ${offset} ${length}`);
  }

  /** A write of the secondary VM: into the replication node (fills active). */
  viewWrite(offset: number, length: number, pattern = 0x5a): Promise<void> {
    return this.qemuIo('top', `write -P ${pattern} ${offset} ${length}`);
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
}

export class QemuPrimary extends QemuProcess {
  /** `secondary`: the unix socket of the secondary's NBD server, which exports `parent0`. */
  static async start(dir: string, size: number, secondary: string): Promise<QemuPrimary> {
    run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'primary.raw'), String(size)]);
    const { proc, qmp, nbdSocket } = await QemuProcess.launch(dir, 'primary');
    const q = new QemuPrimary(proc, qmp, nbdSocket, dir);
    try {
      await qmp.execute('blockdev-add', { driver: 'raw', 'node-name': 'primary-disk0', file: q.file('primary.raw') });
      await qmp.execute('blockdev-add', { driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['primary-disk0'] });
      await qmp.execute('nbd-server-add', { device: 'colo-disk0', name: 'pvm', writable: true });
      await qmp.execute('blockdev-add', {
        driver: 'replication', 'node-name': 'replication0', mode: 'primary',
        file: { driver: 'nbd', server: { type: 'unix', path: secondary }, export: 'parent0' },
      });
      await qmp.execute('x-blockdev-change', { parent: 'colo-disk0', node: 'replication0' });
    } catch (err) {
      await q.close();
      throw err;
    }
    return q;
  }

  async startReplication(): Promise<void> {
    await this.qmp.execute('xen-set-replication', { enable: true, primary: true });
  }

  /** A guest write: through the quorum, to the local disk and over NBD to the secondary. */
  write(offset: number, length: number, pattern: number): Promise<void> {
    return this.qemuIo('pvm', `write -P ${pattern} ${offset} ${length}`);
  }

  /** The primary's own disk. */
  readDisk(): Buffer {
    return readFileSync(join(this.dir, 'primary.raw'));
  }
}
