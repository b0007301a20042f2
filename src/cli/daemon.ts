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
 * monitor (`--chardev` + `--monitor`, `--qmp`) with the export, replication,
 * job and run-state commands. `quit` over QMP stops the daemon like SIGTERM.
 */
import { DAEMON_USAGE, DaemonUsageError, parseDaemonArgs, type DaemonAction } from '../daemon/args.js';
import type { Daemon } from '../daemon/daemon.js';
import type { DaemonExtension, DaemonHost } from '../daemon/extension.js';
import { defaultExtensions, PROCESS_OUTPUT, runDaemon, type DaemonOutput } from '../daemon/run.js';
import { setLogLevel } from '../util/log.js';

export type { DaemonOutput } from '../daemon/run.js';

export async function daemonMain(
  argv: readonly string[],
  extensions: readonly DaemonExtension[] = defaultExtensions(),
  output: DaemonOutput = PROCESS_OUTPUT,
): Promise<number> {
  let args;
  try {
    args = parseDaemonArgs(argv, extensions.flatMap((e) => e.options));
  } catch (err) {
    output.stderr(`colo-blk daemon: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
  if (args.help) {
    output.stdout(DAEMON_USAGE);
    return 0;
  }
  if (args.logLevel) setLogLevel(args.logLevel);
  const actions = args.actions;
  return runDaemon({
    command: 'daemon',
    extensions,
    output,
    ...(args.pidfile ? { pidfile: args.pidfile } : {}),
    setup: async (daemon, host) => {
      for (const action of actions) await apply(action, daemon, extensions, host);
    },
  });
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
