/**
 * The life of a daemon process, shared by `colo-blk daemon`, `secondary`
 * and `primary`: build the graph and listeners (the caller's `setup`),
 * write the pidfile, print one ready line, run until SIGTERM/SIGINT or QMP
 * `quit`, then finish the requests in flight, flush and close every image.
 */
import { existsSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { forwardEvents, jobControl, replicationControl } from '../replication/qmp.js';
import { rootLogger } from '../util/log.js';
import { DaemonUsageError } from './args.js';
import { Daemon } from './daemon.js';
import type { DaemonExtension, DaemonHost } from './extension.js';
import { MonitorExtension } from './monitor.js';

/** Where the daemon's own output goes (tests pass their own). */
export interface DaemonOutput {
  stdout(text: string): void;
  stderr(text: string): void;
}

export const PROCESS_OUTPUT: DaemonOutput = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

/** The QMP monitor with every engine's commands: exports, replication, jobs, run state. */
export function defaultExtensions(): DaemonExtension[] {
  return [new MonitorExtension((daemon, events) => {
    forwardEvents(daemon.graph, events);
    return { replication: replicationControl(daemon.graph), jobs: jobControl(daemon.graph) };
  })];
}

export interface RunOptions {
  /** The command name, for messages (`colo-blk secondary: ...`). */
  command: string;
  extensions: readonly DaemonExtension[];
  output?: DaemonOutput;
  pidfile?: string;
  /**
   * Builds everything. Throw DaemonUsageError(option, message) for what the
   * user must fix; anything else is reported as a startup failure.
   */
  setup(daemon: Daemon, host: DaemonHost): Promise<void>;
  /** Fields for the ready line. */
  describe?(daemon: Daemon): Record<string, unknown>;
}

export async function runDaemon(opts: RunOptions): Promise<number> {
  const output = opts.output ?? PROCESS_OUTPUT;
  const log = rootLogger.child({ component: opts.command });
  const daemon = new Daemon();
  let requestStop!: (reason: string) => void;
  const stopped = new Promise<string>((resolve) => { requestStop = resolve; });
  const onSigterm = (): void => requestStop('SIGTERM');
  const onSigint = (): void => requestStop('SIGINT');
  process.once('SIGTERM', onSigterm);
  process.once('SIGINT', onSigint);
  const host: DaemonHost = { quit: (reason) => requestStop(reason) };
  const forgetSignals = (): void => {
    process.off('SIGTERM', onSigterm);
    process.off('SIGINT', onSigint);
  };

  try {
    await opts.setup(daemon, host);
    if (opts.pidfile) writePidfile(opts.pidfile);
  } catch (err) {
    const failure = err instanceof DaemonUsageError ? err : new DaemonUsageError('startup', (err as Error).message);
    for (const e of opts.extensions) await e.close?.().catch(() => undefined);
    await daemon.shutdown('startup failure').catch(() => undefined);
    forgetSignals();
    output.stderr(`colo-blk ${opts.command}: ${failure.message}\n`);
    return 1;
  }
  // An idle daemon (no listener yet) must stay up until told to stop.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  output.stdout(`${JSON.stringify({
    event: 'daemon.ready',
    pid: process.pid,
    nbd: daemon.nbdAddress(),
    exports: daemon.listExports().map((e) => e.name),
    pidfile: opts.pidfile ?? null,
    ...Object.assign({}, ...opts.extensions.map((e) => e.describe?.() ?? {})),
    ...opts.describe?.(daemon),
  })}\n`);
  log.info('daemon.ready', { pid: process.pid, nbd: daemon.nbdAddress() });

  const signal = await stopped;
  forgetSignals();
  clearInterval(keepAlive);
  let status = 0;
  try {
    for (const e of opts.extensions) await e.close?.();
    await daemon.shutdown(signal.startsWith('SIG') ? 'host-signal' : signal);
  } catch (err) {
    log.error('daemon.shutdown-failed', { error: err });
    status = 1;
  } finally {
    if (opts.pidfile) removePidfile(opts.pidfile);
  }
  log.info('daemon.exit', { signal, status });
  return status;
}

/** Refuses a pidfile that names another live process; writes ours atomically. */
function writePidfile(path: string): void {
  if (existsSync(path)) {
    const other = Number(readFileSync(path, 'utf8').trim());
    if (Number.isInteger(other) && other > 0 && other !== process.pid && isAlive(other)) {
      throw new DaemonUsageError('--pidfile', `${path} belongs to running process ${other}`);
    }
  }
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${process.pid}\n`);
  renameSync(tmp, path);
}

function removePidfile(path: string): void {
  try {
    if (Number(readFileSync(path, 'utf8').trim()) === process.pid) unlinkSync(path);
  } catch {
    // Already gone.
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
