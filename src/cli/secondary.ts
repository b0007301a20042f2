/**
 * `colo-blk secondary`: the secondary side of a replicated disk in one
 * command. It builds the graph of the COLO recipe,
 *
 *   colo-disk0  quorum(fifo, vote-threshold 1)          <- export `svm` (the secondary's own view)
 *     childs0   replication(secondary, top-id colo-disk0)
 *       active0 qcow2 (--active)                         <- the secondary's own writes
 *         hidden0 qcow2 (--hidden)                       <- old data saved before primary writes
 *           parent0 the secondary disk (--disk)          <- export `parent0` (the primary writes here)
 *
 * exports it over NBD, and starts replication. Active and hidden overlays
 * are created where absent; their contents are dropped at start anyway.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { DaemonUsageError } from '../daemon/args.js';
import { defaultExtensions, runDaemon } from '../daemon/run.js';
import { createQcow2, readQcow2Info } from '../drivers/qcow2/index.js';
import { replicationRegistry } from '../replication/registry.js';
import { lastValue } from './args.js';
import { addNode, diskOptions, listenNbd, listenQmp, parseRoleArgs } from './role.js';

export const SECONDARY_USAGE = `usage: colo-blk secondary --disk FILE --listen HOST:PORT [--active FILE] [--hidden FILE]
                          [--qmp PATH] [--pidfile PATH] [--log-level LEVEL]
  --disk FILE       the secondary disk (qcow2 or raw), a copy of the primary's disk
  --listen ADDR     NBD server address (HOST:PORT or unix:PATH); exports:
                      parent0  the secondary disk, for the primary's replication link
                      svm      the secondary's own view (active -> hidden -> disk)
  --active FILE     active overlay (qcow2; default FILE.active.qcow2, created if absent)
  --hidden FILE     hidden overlay (qcow2; default FILE.hidden.qcow2, created if absent)
  --qmp PATH        QMP monitor on a unix socket (checkpoint, failover, status)
`;

/** Makes sure an overlay exists, is qcow2 and has the disk's size. */
async function prepareOverlay(option: string, path: string, size: number): Promise<void> {
  if (!existsSync(path)) {
    await createQcow2(path, { size });
    return;
  }
  let info;
  try {
    info = await readQcow2Info(path);
  } catch (err) {
    throw new DaemonUsageError(option, `${path} is not a usable qcow2 image (${(err as Error).message}): remove it and it will be created`);
  }
  if (info.virtualSize !== size) {
    throw new DaemonUsageError(option, `${path} is ${info.virtualSize} bytes but the secondary disk is ${size}: remove it and it will be created with the right size`);
  }
}

export async function secondaryMain(argv: readonly string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(SECONDARY_USAGE);
    return 0;
  }
  let role;
  try {
    role = parseRoleArgs('secondary', argv, ['disk', 'active', 'hidden'], ['disk']);
  } catch (err) {
    process.stderr.write(`colo-blk secondary: ${(err as Error).message}\n${SECONDARY_USAGE}`);
    return 1;
  }
  const disk = resolve(lastValue(role.args, 'disk')!);
  const active = resolve(lastValue(role.args, 'active') ?? `${disk}.active.qcow2`);
  const hidden = resolve(lastValue(role.args, 'hidden') ?? `${disk}.hidden.qcow2`);
  const extensions = defaultExtensions();
  return runDaemon({
    command: 'secondary',
    extensions,
    ...(role.pidfile ? { pidfile: role.pidfile } : {}),
    async setup(daemon, host) {
      if (active === disk || hidden === disk || active === hidden) {
        throw new DaemonUsageError('--active', 'the disk, the active and the hidden overlay must be three different files');
      }
      const parent = await addNode(daemon, '--disk', await diskOptions('--disk', disk, 'parent0'));
      await prepareOverlay('--hidden', hidden, parent.size);
      await prepareOverlay('--active', active, parent.size);
      await addNode(daemon, '--hidden', { driver: 'qcow2', 'node-name': 'hidden0', file: { driver: 'file', filename: hidden }, backing: 'parent0' });
      await addNode(daemon, '--active', { driver: 'qcow2', 'node-name': 'active0', file: { driver: 'file', filename: active }, backing: 'hidden0' });
      await daemon.addBlockdev({ driver: 'replication', 'node-name': 'childs0', mode: 'secondary', 'top-id': 'colo-disk0', file: 'active0' });
      await daemon.addBlockdev({ driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['childs0'] });
      await listenNbd(daemon, role.listen);
      daemon.addExport({ id: 'parent0', node: 'parent0', name: 'parent0', writable: true, description: 'secondary disk (replication target)' });
      daemon.addExport({ id: 'svm', node: 'colo-disk0', name: 'svm', writable: true, description: "secondary's view" });
      try {
        await replicationRegistry(daemon.graph).startAll('secondary');
      } catch (err) {
        throw new DaemonUsageError('startup', `replication did not start: ${(err as Error).message}`);
      }
      if (role.qmp) await listenQmp(daemon, host, extensions, role.qmp);
    },
    describe: () => ({ role: 'secondary', disk, active, hidden }),
  });
}
