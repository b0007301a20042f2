/**
 * `colo-blk primary`: the primary side of a replicated disk in one command.
 *
 *   colo-disk0     quorum(fifo, vote-threshold 1)        <- export `pvm` (the protected disk)
 *     children.0   primary-disk0: the local disk (--disk)
 *     children.1   replication0: replication(primary) over nbd --secondary
 *
 * Every write goes to both children; reads come from the local disk. A
 * failure on the replication link never fails the writer: it is latched
 * and reported by query-xen-replication-status / x-colo-blk-query-replication.
 */
import { resolve } from 'node:path';
import { DaemonUsageError } from '../daemon/args.js';
import { defaultExtensions, runDaemon } from '../daemon/run.js';
import { isChildManager } from '../control/child-manager.js';
import { replicationRegistry } from '../replication/registry.js';
import { lastValue } from './args.js';
import { nbdUriOptions } from './open-image.js';
import { addNode, describeSize, diskOptions, listenNbd, listenQmp, parseRoleArgs } from './role.js';

export const PRIMARY_USAGE = `usage: colo-blk primary --disk FILE --secondary nbd://HOST:PORT/parent0 --listen HOST:PORT
                        [--reconnect-delay SECONDS] [--forward-window BYTES] [--qmp PATH] [--pidfile PATH] [--log-level LEVEL]
  --disk FILE          the protected disk (qcow2 or raw)
  --secondary URI      the secondary's replication export (nbd://HOST:PORT/parent0 or nbd+unix:///parent0?socket=P)
  --listen ADDR        NBD server address (HOST:PORT or unix:PATH); export pvm is the protected disk
  --reconnect-delay S  keep writes waiting up to S seconds for a lost replication link (default 0)
  --forward-window N   bytes of writes answered to the guest before the secondary answered them
                       (default 8388608; 0 makes every write wait for the secondary, as QEMU does)
  --qmp PATH           QMP monitor on a unix socket (checkpoint, failover, status)
`;

export async function primaryMain(argv: readonly string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(PRIMARY_USAGE);
    return 0;
  }
  let role;
  try {
    role = parseRoleArgs('primary', argv, {
      values: ['disk', 'secondary', 'reconnect-delay', 'forward-window'],
      required: { disk: 'the disk image to protect', secondary: "the secondary's replication export (nbd://HOST:PORT/parent0)" },
    });
  } catch (err) {
    process.stderr.write(`colo-blk primary: ${(err as Error).message}\n`);
    return 1;
  }
  const disk = resolve(lastValue(role.args, 'disk')!);
  const secondaryUri = lastValue(role.args, 'secondary')!;
  const reconnectDelay = lastValue(role.args, 'reconnect-delay');
  const forwardWindow = lastValue(role.args, 'forward-window');
  const extensions = defaultExtensions();
  return runDaemon({
    command: 'primary',
    extensions,
    ...(role.pidfile ? { pidfile: role.pidfile } : {}),
    async setup(daemon, host) {
      const target = nbdUriOptions(secondaryUri);
      if (!target) throw new DaemonUsageError('--secondary', `'${secondaryUri}' is not an nbd:// or nbd+unix:// URI`);
      if (reconnectDelay !== undefined && !/^\d+$/.test(reconnectDelay)) {
        throw new DaemonUsageError('--reconnect-delay', `'${reconnectDelay}' is not a number of seconds`);
      }
      if (forwardWindow !== undefined && !/^\d+$/.test(forwardWindow)) {
        throw new DaemonUsageError('--forward-window', `'${forwardWindow}' is not a number of bytes`);
      }
      const local = await addNode(daemon, '--disk', await diskOptions('--disk', disk, 'primary-disk0'));
      const quorum = await daemon.addBlockdev({ driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['primary-disk0'] });
      if (reconnectDelay) target['reconnect-delay'] = reconnectDelay;
      let replication;
      try {
        replication = await daemon.addBlockdev({
          driver: 'replication', 'node-name': 'replication0', mode: 'primary',
          ...(forwardWindow !== undefined ? { 'x-forward-window': Number(forwardWindow) } : {}),
          file: target,
        });
      } catch (err) {
        const reason = (err as Error).message;
        if (/export .* not present/.test(reason)) {
          throw new DaemonUsageError('--secondary', `the secondary at ${secondaryUri} has no export '${String(target.export ?? '')}': name its replication export (parent0 on colo-blk and in QEMU's recipe)`);
        }
        throw new DaemonUsageError('--secondary', `cannot reach the secondary at ${secondaryUri} (${reason}): start colo-blk secondary first and check the address`);
      }
      if (replication.size !== local.size) {
        throw new DaemonUsageError('--secondary', `the secondary disk is ${describeSize(replication.size)} but the primary disk is ${describeSize(local.size)}: give the secondary a copy of this disk`);
      }
      if (!isChildManager(quorum)) throw new Error('quorum cannot take children at run time');
      quorum.addChild(replication);
      try {
        await replicationRegistry(daemon.graph).startAll('primary');
      } catch (err) {
        throw new DaemonUsageError('startup', `replication did not start: ${(err as Error).message}`);
      }
      await listenNbd(daemon, role.listen);
      daemon.addExport({ id: 'pvm', node: 'colo-disk0', name: 'pvm', writable: true, description: 'protected disk' });
      if (role.qmp) await listenQmp(daemon, host, extensions, role.qmp);
    },
    describe: () => ({ role: 'primary', disk, secondary: secondaryUri }),
  });
}
