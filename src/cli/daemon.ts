/**
 * `colo-blk daemon`: a storage daemon with qemu-storage-daemon's options.
 *
 * Readiness is observable three ways: one JSON line `{"event":"daemon.ready",
 * ...}` on stdout (with the bound NBD address, useful with port 0), the
 * pidfile (written only once everything listens), and the listening socket.
 * SIGTERM and SIGINT finish the requests in flight, flush and close every
 * image, remove the pidfile and exit 0.
 *
 * Extensions (src/daemon/extension.ts) claim options: by default the QMP
 * monitor (`--chardev` + `--monitor`, `--qmp`). `quit` over QMP stops the
 * daemon like SIGTERM.
 */
import { existsSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { Daemon } from '../daemon/daemon.js';
import { DAEMON_USAGE, DaemonUsageError, parseDaemonArgs, type DaemonAction } from '../daemon/args.js';
import type { DaemonExtension, DaemonHost } from '../daemon/extension.js';
import { MonitorExtension } from '../daemon/monitor.js';
import { rootLogger, setLogLevel } from '../util/log.js';

/** Where the daemon's own output goes (tests pass their own). */
export interface DaemonOutput {
  stdout(text: string): void;
  stderr(text: string): void;
}

const PROCESS_OUTPUT: DaemonOutput = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

export async function daemonMain(
  argv: readonly string[],
  extensions: readonly DaemonExtension[] = [new MonitorExtension()],
  output: DaemonOutput = PROCESS_OUTPUT,
): Promise<number> {
  const usageFailure = (err: unknown): number => {
    output.stderr(`colo-blk daemon: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  };
  let args;
  try {
    args = parseDaemonArgs(argv, extensions.flatMap((e) => e.options));
  } catch (err) {
    return usageFailure(err);
  }
  if (args.help) {
    output.stdout(DAEMON_USAGE);
    return 0;
  }
  if (args.logLevel) setLogLevel(args.logLevel);
  const log = rootLogger.child({ component: 'daemon' });
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
    for (const action of args.actions) await apply(action, daemon, extensions, host);
    if (args.pidfile) writePidfile(args.pidfile);
  } catch (err) {
    const failure = err instanceof DaemonUsageError ? err : new DaemonUsageError('startup', (err as Error).message);
    for (const e of extensions) await e.close?.().catch(() => undefined);
    await daemon.shutdown('startup failure').catch(() => undefined);
    forgetSignals();
    return usageFailure(failure);
  }
  // An idle daemon (no listener yet) must stay up until told to stop.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  output.stdout(`${JSON.stringify({
    event: 'daemon.ready',
    pid: process.pid,
    nbd: daemon.nbdAddress(),
    exports: daemon.listExports().map((e) => e.name),
    pidfile: args.pidfile ?? null,
    ...Object.assign({}, ...extensions.map((e) => e.describe?.() ?? {})),
  })}\n`);
  log.info('daemon.ready', { pid: process.pid, nbd: daemon.nbdAddress() });

  const signal = await stopped;
  forgetSignals();
  clearInterval(keepAlive);
  let status = 0;
  try {
    for (const e of extensions) await e.close?.();
    await daemon.shutdown(signal.startsWith('SIG') ? 'host-signal' : signal);
  } catch (err) {
    log.error('daemon.shutdown-failed', { error: err });
    status = 1;
  } finally {
    if (args.pidfile) removePidfile(args.pidfile);
  }
  log.info('daemon.exit', { signal, status });
  return status;
}

async function apply(action: DaemonAction, daemon: Daemon, extensions: readonly DaemonExtension[], host: DaemonHost): Promise<void> {
  const option = action.kind === 'extension' ? `--${action.option}` : `--${action.kind}`;
  try {
    switch (action.kind) {
      case 'blockdev':
        await daemon.addBlockdev(action.options);
        return;
      case 'nbd-server':
        await daemon.startNbdServer(action.config);
        return;
      case 'export':
        daemon.addExport(action.config);
        return;
      case 'extension': {
        const ext = extensions.find((e) => e.options.includes(action.option))!;
        await ext.apply(action.option, action.value, daemon, host);
        return;
      }
    }
  } catch (err) {
    throw new DaemonUsageError(option, err instanceof Error ? err.message : String(err));
  }
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
