/**
 * Child processes of the harness. Every child dies with the harness:
 *  - it is started under `setpriv --pdeathsig KILL`, so even a SIGKILL of
 *    the harness takes it down;
 *  - it runs in its own process group, so a Ctrl-C reaches only the harness,
 *    which then stops the children in order (SIGTERM, then SIGKILL);
 *  - on any exit of the harness (normal, exception, signal) the 'exit'
 *    handler SIGKILLs whatever is left.
 * Each child's stdout and stderr go to its own log file, and the command
 * line (with environment overrides) to commands.log.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, createWriteStream, type WriteStream } from 'node:fs';
import { join } from 'node:path';

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnOptions {
  /** Environment overrides (shown in the command line). */
  env?: Record<string, string>;
  /** Called with each complete stdout line. */
  onStdoutLine?: (line: string) => void;
}

const TAIL_BYTES = 4096;

export class ManagedProcess {
  private status: ExitStatus | null = null;
  private expected = false;
  private readonly exitPromise: Promise<ExitStatus>;
  private tailText = '';
  private readonly log: WriteStream;

  constructor(
    readonly name: string,
    readonly commandLine: string,
    private readonly child: ChildProcess,
    logPath: string,
    onStdoutLine: ((line: string) => void) | undefined,
  ) {
    this.log = createWriteStream(logPath, { flags: 'a' });
    let partial = '';
    const keep = (chunk: Buffer): void => {
      this.log.write(chunk);
      this.tailText = (this.tailText + chunk.toString()).slice(-TAIL_BYTES);
    };
    child.stdout?.on('data', (chunk: Buffer) => {
      keep(chunk);
      if (!onStdoutLine) return;
      partial += chunk.toString();
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        onStdoutLine(partial.slice(0, nl));
        partial = partial.slice(nl + 1);
      }
    });
    child.stderr?.on('data', keep);
    this.exitPromise = new Promise((resolve) => {
      child.once('error', (err) => {
        this.tailText += `\nspawn error: ${err.message}`;
        this.status ??= { code: 127, signal: null };
        resolve(this.status);
      });
      child.once('exit', (code, signal) => {
        this.status = { code, signal };
        resolve(this.status);
      });
    });
    // The log is closed only when the pipes are drained, so the tail is complete.
    child.once('close', () => this.log.end());
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name} has no pid (it failed to start: ${this.tailText.trim()})`);
    return this.child.pid;
  }

  get exited(): boolean {
    return this.status !== null;
  }

  get exitStatus(): ExitStatus | null {
    return this.status;
  }

  /** The last few KiB of its output, for error messages. */
  tail(): string {
    return this.tailText.trim();
  }

  /** Resolves when it exits; rejects (after killing it) when it runs longer than `timeoutMs`. */
  async waitExit(timeoutMs?: number): Promise<ExitStatus> {
    if (timeoutMs === undefined) return this.exitPromise;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.signal('SIGKILL');
        reject(new Error(`${this.name} ran longer than ${Math.round(timeoutMs / 1000)} s and was killed`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.exitPromise, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The harness is about to make it exit (QMP quit, a signal): its exit is not a surprise. */
  expectExit(): void {
    this.expected = true;
  }

  /** How it exited, if it did without the harness asking it to. */
  get unexpectedExit(): ExitStatus | null {
    return this.status && !this.expected ? this.status : null;
  }

  /** Signals its process group (the child leads one), by id. */
  signal(sig: NodeJS.Signals): void {
    this.expected = true;
    if (this.status || this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, sig);
    } catch {
      try {
        process.kill(this.child.pid, sig);
      } catch {
        // Already gone.
      }
    }
  }
}

export class ProcessManager {
  private readonly live = new Set<ManagedProcess>();
  private readonly setpriv = hasCommand('setpriv');
  private counter = 0;

  constructor(private readonly logDir: string, private readonly commandLog: string) {}

  spawn(name: string, command: string, args: readonly string[], options: SpawnOptions = {}): ManagedProcess {
    const argv = this.setpriv ? ['setpriv', '--pdeathsig', 'KILL', '--', command, ...args] : [command, ...args];
    const child = spawn(argv[0]!, argv.slice(1), {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...options.env },
    });
    const line = commandLine(command, args, options.env);
    appendFileSync(this.commandLog, `$ ${line} &  # ${name}, pid ${child.pid ?? '?'}\n`);
    const logPath = join(this.logDir, `${String(++this.counter).padStart(3, '0')}-${name.replace(/[^\w.-]+/g, '_')}.log`);
    const proc = new ManagedProcess(name, line, child, logPath, options.onStdoutLine);
    this.live.add(proc);
    void proc.waitExit().then((st) => {
      this.live.delete(proc);
      appendFileSync(this.commandLog, `# ${name} (pid ${child.pid ?? '?'}) exited: ${st.signal ?? st.code}\n`);
    });
    return proc;
  }

  /** SIGTERM (or `signal`), then SIGKILL after `graceMs`. */
  async stop(proc: ManagedProcess, options: { signal?: NodeJS.Signals; graceMs?: number } = {}): Promise<ExitStatus> {
    if (proc.exited) return proc.exitStatus!;
    proc.signal(options.signal ?? 'SIGTERM');
    try {
      return await proc.waitExit(options.graceMs ?? 5000);
    } catch {
      return proc.waitExit();
    }
  }

  async stopAll(graceMs = 3000): Promise<void> {
    await Promise.all([...this.live].map((p) => this.stop(p, { graceMs })));
  }

  /** For the 'exit' handler, where nothing asynchronous runs any more. */
  killAllNow(): void {
    for (const p of this.live) p.signal('SIGKILL');
  }

  get running(): number {
    return this.live.size;
  }
}

/**
 * An exit that says "told to stop" (status 0, or SIGTERM/SIGINT/SIGHUP)
 * rather than "crashed" (another status or signal): on this shared machine
 * other people's cleanup sometimes stops servers that are not theirs.
 */
export function isOutsideStop(st: ExitStatus): boolean {
  return st.signal === null ? st.code === 0 : ['SIGTERM', 'SIGINT', 'SIGHUP'].includes(st.signal);
}

export function describeExit(st: ExitStatus): string {
  return st.signal ? `killed by ${st.signal}` : `exited with status ${st.code}`;
}

export function hasCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

export function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

export function commandLine(command: string, args: readonly string[], env?: Record<string, string>): string {
  const prefix = Object.entries(env ?? {}).map(([k, v]) => `${k}=${shellQuote(v)} `).join('');
  return prefix + [command, ...args].map(shellQuote).join(' ');
}

/** Runs a short command to completion (not tracked: it cannot outlive its await). */
export function runSync(command: string, args: readonly string[], commandLog?: string): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (commandLog) appendFileSync(commandLog, `$ ${commandLine(command, args)}  # rc=${r.status ?? r.signal}\n`);
  return { status: r.status ?? 128, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
}
