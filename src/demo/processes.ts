/**
 * Runs colo-blk daemons as child processes: spawns the same build's CLI,
 * waits for its `daemon.ready` line (no sleeps), keeps its stderr for the
 * report when something fails, and kills it on every exit path.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { NODE_FLAGS } from '../cli/node-flags.js';

export const CLI_PATH = fileURLToPath(new URL('../cli/main.js', import.meta.url));

export interface ReadyLine {
  event: 'daemon.ready';
  pid: number;
  nbd: string | null;
  exports: string[];
  qmp?: string[];
  [key: string]: unknown;
}

export class DaemonProcess {
  private stderrTail: string[] = [];
  private exited: Promise<number | null>;

  private constructor(readonly name: string, readonly child: ChildProcess, readonly ready: ReadyLine) {
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
      else child.once('exit', (code) => resolve(code));
    });
  }

  /** Spawns `colo-blk <args>` and resolves once it printed its ready line. */
  static async start(name: string, args: readonly string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<DaemonProcess> {
    const child = spawn(process.execPath, [...NODE_FLAGS, CLI_PATH, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { UV_THREADPOOL_SIZE: String(Math.max(2, availableParallelism())), ...process.env, ...options.env },
    });
    const tail: string[] = [];
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      tail.push(...chunk.split('\n').filter((l) => l !== ''));
      if (tail.length > 50) tail.splice(0, tail.length - 50);
    });
    const ready = await new Promise<ReadyLine>((resolve, reject) => {
      let buffered = '';
      const timer = setTimeout(() => fail(new Error(`${name} did not become ready within ${options.timeoutMs ?? 15000} ms`)), options.timeoutMs ?? 15000);
      const fail = (err: Error): void => {
        clearTimeout(timer);
        child.kill('SIGKILL');
        reject(new Error(`${err.message}\n${tail.slice(-10).join('\n')}`));
      };
      child.stdout!.setEncoding('utf8');
      child.stdout!.on('data', (chunk: string) => {
        buffered += chunk;
        const nl = buffered.indexOf('\n');
        if (nl < 0) return;
        try {
          const line = JSON.parse(buffered.slice(0, nl)) as ReadyLine;
          if (line.event === 'daemon.ready') {
            clearTimeout(timer);
            resolve(line);
          }
        } catch {
          fail(new Error(`${name} printed something unexpected: ${buffered.slice(0, nl)}`));
        }
      });
      child.once('exit', (code, signal) => fail(new Error(`${name} exited (${signal ?? code}) before it was ready`)));
    });
    child.removeAllListeners('exit');
    const proc = new DaemonProcess(name, child, ready);
    proc.stderrTail = tail;
    return proc;
  }

  get pid(): number {
    return this.ready.pid;
  }

  /** Host and port of the NBD server from the ready line. */
  get nbdAddress(): { host: string; port: number } {
    const m = /^(.*):(\d+)$/.exec(this.ready.nbd ?? '');
    if (!m) throw new Error(`${this.name} has no TCP NBD address`);
    return { host: m[1]!, port: Number(m[2]) };
  }

  lastLogLines(n = 10): string[] {
    return this.stderrTail.slice(-n);
  }

  /** Sends a signal and waits for the exit status (null when killed by a signal). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}
