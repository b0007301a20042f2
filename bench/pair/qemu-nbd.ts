/**
 * qemu-nbd serving a raw image, with the anchor's command line
 * (REPORT.md §6), stock or with the glibc malloc tuning.
 */
import { join } from 'node:path';
import type { SystemId } from './config.js';
import { copyImage } from './images.js';
import { waitForNbd } from './nbd-client.js';
import type { ManagedProcess } from './processes.js';
import {
  HOST, NotReplicatedError, TUNED_MALLOC_ENV, freePort, unexpectedExits,
  type CheckpointTiming, type FailoverTiming, type System, type SystemContext, type SystemProcess, type UnexpectedExit, type Variant,
} from './system.js';

export class QemuNbd implements System {
  readonly group = 'nbd' as const;
  readonly replicated = false;
  readonly variant: Variant;
  private proc: ManagedProcess | null = null;
  private port = 0;
  private commandLine = '';

  constructor(readonly id: SystemId, private readonly ctx: SystemContext, tuned: boolean) {
    this.variant = tuned ? 'tuned' : 'stock';
  }

  private get image(): string {
    return join(this.ctx.dir, 'disk.raw');
  }

  async start(): Promise<void> {
    copyImage(this.ctx.baseImage, this.image);
    const env = this.variant === 'tuned' ? { ...TUNED_MALLOC_ENV } : undefined;
    for (let attempt = 1; ; attempt++) {
      this.port = await freePort();
      const args = ['-f', 'raw', '-b', HOST, '-p', String(this.port), '-x', 'disk', '-t', '--cache=writeback', '--aio=threads', this.image];
      const proc = this.ctx.pm.spawn(this.id, 'qemu-nbd', args, { env });
      this.commandLine = proc.commandLine;
      try {
        await waitForNbd(this.pvmUri(), 15_000, () => !proc.exited);
        this.proc = proc;
        return;
      } catch (err) {
        await this.ctx.pm.stop(proc, { signal: 'SIGKILL' });
        // Another process may have taken the port between the probe and the bind.
        if (attempt >= 3 || !/in use/i.test(proc.tail())) throw new Error(`${(err as Error).message}; qemu-nbd: ${proc.tail()}`);
      }
    }
  }

  async stop(): Promise<void> {
    if (this.proc) await this.ctx.pm.stop(this.proc);
  }

  pvmUri(): string {
    return `nbd://${HOST}:${this.port}/disk`;
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
    return this.proc && !this.proc.exited ? [{ role: 'server', pid: this.proc.pid }] : [];
  }

  unexpectedExits(): UnexpectedExit[] {
    return unexpectedExits([['server', this.proc]]);
  }

  async checkHealth(): Promise<void> {
    if (!this.proc || this.proc.exited) throw new Error(`${this.id}: qemu-nbd is not running: ${this.proc?.tail() ?? 'never started'}`);
  }

  disks(): { primary: string } {
    return { primary: this.image };
  }

  describe(): string[] {
    return [this.commandLine.replace(this.ctx.dir, 'DIR').replace(/-p \d+/, '-p PORT')];
  }
}
