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
 * are created where absent. Overlays that hold data were left by a run that
 * did not end at a checkpoint (killed, stopped while replicating, failed
 * over): the disk may then differ from the primary's, and the overlays hold
 * the only copy of the last checkpoint, which starting would erase. The
 * secondary refuses them unless told `--discard-overlays` (docs/operations.md).
 */
import { resolve } from 'node:path';
import { DaemonUsageError } from '../daemon/args.js';
import { defaultExtensions, runDaemon } from '../daemon/run.js';
import { replicationRegistry } from '../replication/registry.js';
import { rootLogger } from '../util/log.js';
import { hasSwitch, lastValue } from './args.js';
import { overlayDataBytes, prepareOverlay, removeCreated, type Overlay } from './overlays.js';
import { addNode, describeSize, diskOptions, listenNbd, listenQmp, parseRoleArgs } from './role.js';

export const SECONDARY_USAGE = `usage: colo-blk secondary --disk FILE --listen HOST:PORT [--active FILE] [--hidden FILE]
                          [--discard-overlays] [--qmp PATH] [--pidfile PATH] [--log-level LEVEL]
  --disk FILE       the secondary disk (qcow2 or raw), a copy of the primary's disk
  --listen ADDR     NBD server address (HOST:PORT or unix:PATH); exports:
                      parent0  the secondary disk, for the primary's replication link
                      svm      the secondary's own view (active -> hidden -> disk)
  --active FILE     active overlay (qcow2; default FILE.active.qcow2, created if absent)
  --hidden FILE     hidden overlay (qcow2; default FILE.hidden.qcow2, created if absent)
  --discard-overlays  start even if the overlays hold data from an earlier run (their
                    data is dropped; right only if the primary lost no write meanwhile)
  --qmp PATH        QMP monitor on a unix socket (checkpoint, failover, status)
`;

/** What an earlier run left in the overlays, in bytes. */
interface Leftovers {
  active: number;
  hidden: number;
}

async function measure(overlay: Overlay): Promise<number> {
  if (overlay.created) return 0;
  try {
    return await overlayDataBytes(overlay.path);
  } catch (err) {
    throw new DaemonUsageError(overlay.option, `${overlay.path} is a damaged qcow2 image (${(err as Error).message}): repair it (qemu-img check -r all) or name a new path (it will be created)`);
  }
}

function refuseLeftovers(disk: string, left: Leftovers): never {
  throw new DaemonUsageError('--disk', `${disk} may no longer match the primary's disk: its overlays hold ${describeSize(left.active + left.hidden)} `
    + `from an earlier run that did not end at a checkpoint (active ${left.active}, hidden ${left.hidden} bytes); `
    + 'copy the primary\'s disk over it and delete both overlays, or add --discard-overlays if the primary lost no write while this secondary was down');
}

export async function secondaryMain(argv: readonly string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(SECONDARY_USAGE);
    return 0;
  }
  let role;
  try {
    role = parseRoleArgs('secondary', argv, {
      values: ['disk', 'active', 'hidden'],
      switches: ['discard-overlays'],
      required: { disk: "the secondary disk image (a copy of the primary's disk)" },
    });
  } catch (err) {
    process.stderr.write(`colo-blk secondary: ${(err as Error).message}\n`);
    return 1;
  }
  const disk = resolve(lastValue(role.args, 'disk')!);
  const active = resolve(lastValue(role.args, 'active') ?? `${disk}.active.qcow2`);
  const hidden = resolve(lastValue(role.args, 'hidden') ?? `${disk}.hidden.qcow2`);
  const discard = hasSwitch(role.args, 'discard-overlays');
  const extensions = defaultExtensions();
  let discarded: Leftovers | null = null;
  return runDaemon({
    command: 'secondary',
    extensions,
    ...(role.pidfile ? { pidfile: role.pidfile } : {}),
    async setup(daemon, host) {
      if (active === disk || hidden === disk || active === hidden) {
        throw new DaemonUsageError('--active', 'the disk, the active and the hidden overlay must be three different files');
      }
      const parent = await addNode(daemon, '--disk', await diskOptions('--disk', disk, 'parent0'));
      const overlays: Overlay[] = [];
      try {
        overlays.push(await prepareOverlay('--hidden', hidden, parent.size));
        overlays.push(await prepareOverlay('--active', active, parent.size));
        const left: Leftovers = { hidden: await measure(overlays[0]!), active: await measure(overlays[1]!) };
        if (left.active + left.hidden > 0) {
          if (!discard) refuseLeftovers(disk, left);
          discarded = left;
        }
        // Checkpoints empty the overlays every few seconds; keeping their space makes the next round's writes overwrites.
        const keep = { 'x-empty-keeps-space': true };
        await addNode(daemon, '--hidden', { driver: 'qcow2', 'node-name': 'hidden0', ...keep, file: { driver: 'file', filename: hidden }, backing: 'parent0' });
        await addNode(daemon, '--active', { driver: 'qcow2', 'node-name': 'active0', ...keep, file: { driver: 'file', filename: active }, backing: 'hidden0' });
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
        if (discarded) rootLogger.child({ component: 'secondary' }).warn('secondary.overlays-discarded', { ...discarded });
        if (role.qmp) await listenQmp(daemon, host, extensions, role.qmp);
      } catch (err) {
        // A refused start leaves no files behind that it made.
        removeCreated(overlays);
        throw err;
      }
    },
    describe: () => ({ role: 'secondary', disk, active, hidden, ...(discarded ? { 'discarded-bytes': discarded } : {}) }),
  });
}
