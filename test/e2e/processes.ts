/**
 * Child processes for the end-to-end tests: spawned into a group that kills
 * every member on every exit path (the test's `finally`, the test process
 * exiting, or being told to stop), with their output kept for assertions
 * and failure messages.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { NODE_FLAGS } from '../../src/cli/node-flags.js';
import { CLI } from '../helpers/env.js';

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Every child of every group still alive: the last line of defence. */
const live = new Set<ChildProcess>();

function killLiveSync(): void {
  for (const child of live) child.kill('SIGKILL');
}

process.once('exit', killLiveSync);
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    killLiveSync();
    process.exit(128 + (signal === 'SIGTERM' ? 15 : 2));
  });
}

export class Child {
  private out = '';
  private err = '';
  readonly exited: Promise<Exit>;

  constructor(readonly name: string, readonly proc: ChildProcess) {
    proc.stdout?.setEncoding('utf8');
    proc.stderr?.setEncoding('utf8');
    proc.stdout?.on('data', (d: string) => { this.out += d; });
    proc.stderr?.on('data', (d: string) => { this.err += d; });
    live.add(proc);
    // 'close' (not 'exit'): stdout and stderr have been read to the end.
    this.exited = new Promise((resolve) => proc.once('close', (code, signal) => {
      live.delete(proc);
      resolve({ code, signal });
    }));
    proc.once('error', () => live.delete(proc));
  }

  get pid(): number {
    return this.proc.pid!;
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  stdout(): string {
    return this.out;
  }

  stderr(): string {
    return this.err;
  }

  /** The last lines of stderr, for failure messages. */
  tail(lines = 15): string {
    return this.err.trimEnd().split('\n').slice(-lines).join('\n');
  }

  /** Sends a signal (if still running) and waits for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<Exit> {
    if (this.alive) this.proc.kill(signal);
    return this.exited;
  }

  /**
   * Resolves with the first stdout line that parses as JSON with this
   * `event`; rejects if the process exits first or prints something else.
   */
  waitReady(timeoutMs = 20_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`${this.name} was not ready within ${timeoutMs} ms\n${this.tail()}`)), timeoutMs);
      const check = (): void => {
        const nl = this.out.indexOf('\n');
        if (nl < 0) return;
        try {
          const line = JSON.parse(this.out.slice(0, nl)) as Record<string, unknown>;
          if (line.event === 'daemon.ready') done(null, line);
          else done(new Error(`${this.name} printed ${this.out.slice(0, nl)}`));
        } catch {
          done(new Error(`${this.name} printed ${this.out.slice(0, nl)}`));
        }
      };
      const onExit = (): void => {
        // Let the stdout handler see the last chunk first.
        setImmediate(() => done(new Error(`${this.name} exited (${this.proc.exitCode ?? this.proc.signalCode}) before it was ready\n${this.tail()}`)));
      };
      const done = (err: Error | null, line?: Record<string, unknown>): void => {
        clearTimeout(timer);
        this.proc.stdout?.off('data', check);
        this.proc.off('exit', onExit);
        if (err) reject(err);
        else resolve(line!);
      };
      this.proc.stdout?.on('data', check);
      this.proc.once('exit', onExit);
      check();
    });
  }
}

/** The children of one test; `killAll` in its `finally`. */
export class ProcessGroup {
  private readonly children: Child[] = [];

  spawn(name: string, command: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): Child {
    const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    const child = new Child(name, proc);
    this.children.push(child);
    return child;
  }

  /** `colo-blk ARGS` from this build. */
  colo(name: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): Child {
    return this.spawn(name, process.execPath, [...NODE_FLAGS, CLI, ...args], env);
  }

  /** SIGKILLs whatever is still running and waits for all of it. */
  async killAll(): Promise<void> {
    await Promise.all(this.children.map((c) => c.kill('SIGKILL')));
  }

  /** Stderr tails of every child, for a failing assertion's message. */
  report(): string {
    return this.children.map((c) => `--- ${c.name} (pid ${c.proc.pid}):\n${c.tail()}`).join('\n');
  }
}

/** Waits for a file a child writes once it is ready (a pidfile): a bounded poll, as there is no event for it. */
export async function waitForFile(path: string, child: Child, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!existsSync(path) || readFileSync(path, 'utf8').trim() === '') {
    if (!child.alive) throw new Error(`${child.name} exited before writing ${path}\n${child.tail()}`);
    if (Date.now() > deadline) throw new Error(`${child.name} did not write ${path} within ${ms} ms\n${child.tail()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
