/**
 * `colo-blk checkpoint|failover|status --qmp PATH`: the pair's everyday
 * operations as one command each, over QMP (they work against QEMU too).
 *
 *   checkpoint --qmp SECONDARY [--primary-qmp PRIMARY]
 *       pause the primary (when given), checkpoint both, resume
 *   failover --qmp PATH
 *       on a secondary: stop taking the primary's writes and commit the
 *       overlays into the secondary disk, which then serves as the new primary;
 *       on a primary: drop the replication child (the secondary is gone)
 *   status --qmp PATH
 *       stage, errors, bytes buffered, commit progress
 */
import { QmpError } from '../control/errors.js';
import { QmpClient } from '../control/qmp-client.js';
import { checkpointPair, failoverPrimary, failoverSecondary, replicationStatus } from '../control/colo-ops.js';
import { lastValue, parseArgs, UsageError } from './args.js';

const USAGE = `usage: colo-blk checkpoint --qmp SECONDARY_QMP [--primary-qmp PRIMARY_QMP]
       colo-blk failover --qmp QMP [--timeout SECONDS]
       colo-blk status --qmp QMP
`;

export async function coloMain(command: 'checkpoint' | 'failover' | 'status', argv: readonly string[]): Promise<number> {
  let qmp: string;
  let primaryQmp: string | undefined;
  let timeoutMs = 120_000;
  try {
    const args = parseArgs(argv, { withValue: ['qmp', 'primary-qmp', 'timeout'], switches: ['help', 'h'] });
    if (args.options.has('help') || args.options.has('h')) {
      process.stdout.write(USAGE);
      return 0;
    }
    const q = lastValue(args, 'qmp');
    if (!q) throw new UsageError('--qmp is required');
    qmp = q;
    primaryQmp = lastValue(args, 'primary-qmp');
    const t = lastValue(args, 'timeout');
    if (t !== undefined) timeoutMs = Number(t) * 1000;
    if (args.positionals.length > 0) throw new UsageError(`unexpected argument '${args.positionals[0]}'`);
  } catch (err) {
    process.stderr.write(`colo-blk ${command}: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const clients: QmpClient[] = [];
  try {
    const client = await QmpClient.connect(qmp.replace(/^unix:/, ''));
    clients.push(client);
    switch (command) {
      case 'status':
        print(await replicationStatus(client));
        return 0;
      case 'checkpoint': {
        const primary = primaryQmp ? await QmpClient.connect(primaryQmp.replace(/^unix:/, '')) : undefined;
        if (primary) clients.push(primary);
        const t = await checkpointPair(client, primary);
        print({ 'pause-ms': round(t.pauseMs), 'secondary-ms': round(t.secondaryMs), 'total-ms': round(t.totalMs) });
        return 0;
      }
      case 'failover': {
        const status = await replicationStatus(client);
        const mode = status.nodes?.[0]?.mode ?? 'secondary';
        if (mode === 'primary') {
          await failoverPrimary(client);
          print({ role: 'primary', replication: 'removed' });
          return 0;
        }
        const r = await failoverSecondary(client, { timeoutMs });
        print({ role: 'secondary', stage: r.stage, 'command-ms': round(r.commandMs), 'done-ms': round(r.doneMs), ...(r.error ? { error: r.error } : {}) });
        return r.stage === 'done' ? 0 : 1;
      }
      default:
        return 2;
    }
  } catch (err) {
    const text = err instanceof QmpError ? `${err.class}: ${err.desc}` : (err as Error).message;
    process.stderr.write(`colo-blk ${command}: ${text}\n`);
    return 1;
  } finally {
    for (const c of clients) await c.close();
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
