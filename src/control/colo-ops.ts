/**
 * The COLO operations a pair needs, as sequences of QMP commands that work
 * the same against colo-blk and against QEMU: a checkpoint (primary paused
 * so no write straddles it), a secondary failover (the commit of active and
 * hidden into the secondary disk), a primary failover (drop the dead
 * secondary), and a status read. The CLI shortcuts, the demo, the benchmark
 * harness and the tests all use these.
 */
import { performance } from 'node:perf_hooks';
import { QmpError } from './errors.js';
import type { QmpClient } from './qmp-client.js';

export interface ReplicationNodeInfo {
  'node-name': string;
  mode: 'primary' | 'secondary';
  stage: 'none' | 'running' | 'failover' | 'failover-failed' | 'done';
  errors: Array<{ disk: string; role: string; operation: string; errno: number; 'errno-name': string; desc: string }>;
  'active-bytes'?: number;
  'hidden-bytes'?: number;
  checkpoints: number;
  'last-checkpoint-us'?: number;
  commit?: { status: 'running' | 'completed' | 'failed'; offset: number; len: number; error?: string };
  'top-id'?: string;
}

export interface StatusReport {
  /** QEMU's query-xen-replication-status. */
  status: { error: boolean; desc?: string };
  /** colo-blk's per-node detail (absent when the peer is QEMU). */
  nodes?: ReplicationNodeInfo[];
  running?: boolean;
}

export async function replicationStatus(client: QmpClient): Promise<StatusReport> {
  const report: StatusReport = { status: await client.execute('query-xen-replication-status') };
  try {
    report.nodes = await client.execute<ReplicationNodeInfo[]>('x-colo-blk-query-replication');
    report.running = (await client.execute<{ running: boolean }>('query-status')).running;
  } catch (err) {
    if (!(err instanceof QmpError && err.class === 'CommandNotFound')) throw err;
  }
  return report;
}

export interface CheckpointTiming {
  /** Time to pause the primary (its writes in flight drained). */
  pauseMs: number;
  /** The secondary's checkpoint round trip. */
  secondaryMs: number;
  /** From the first command to the primary running again. */
  totalMs: number;
}

/**
 * A checkpoint of the pair: pause the primary's exports (so every write it
 * acknowledged has reached the secondary and none is in flight), checkpoint
 * the secondary, then the primary (a no-op for its disks, as in QEMU), and
 * resume. Without a primary client only the secondary is checkpointed, which
 * is right when nothing writes to the primary meanwhile.
 */
export async function checkpointPair(secondary: QmpClient, primary?: QmpClient): Promise<CheckpointTiming> {
  const t0 = performance.now();
  let paused = false;
  if (primary) {
    await primary.execute('stop');
    paused = true;
  }
  const t1 = performance.now();
  let secondaryMs: number;
  try {
    await secondary.execute('xen-colo-do-checkpoint');
    secondaryMs = performance.now() - t1;
    if (primary) await primary.execute('xen-colo-do-checkpoint');
  } finally {
    if (paused) await primary!.execute('cont');
  }
  return { pauseMs: t1 - t0, secondaryMs, totalMs: performance.now() - t0 };
}

export interface FailoverResult {
  stage: ReplicationNodeInfo['stage'];
  /** The failover command's round trip (the commit runs on afterwards). */
  commandMs: number;
  /** Until the commit finished (stage done or failover-failed). */
  doneMs: number;
  error?: string;
}

/**
 * Secondary failover, as the COLO recipe does it: stop taking the primary's
 * writes (hard-remove the parent0 export), then `xen-set-replication`
 * failover, then wait for the commit to end. With colo-blk it waits for the
 * COLO_BLK_REPLICATION_STAGE event; with QEMU it polls for the commit's
 * filter node to disappear.
 */
export interface FailoverOptions {
  timeoutMs?: number;
  /** The export the primary writes into (removed first so no more primary writes land). */
  replicationExport?: string;
  /** Runs right after the failover command returned, while the commit may still run. */
  afterCommand?: () => Promise<void>;
}

export async function failoverSecondary(client: QmpClient, options: FailoverOptions = {}): Promise<FailoverResult> {
  const timeoutMs = options.timeoutMs ?? 120_000;
  const exportName = options.replicationExport ?? 'parent0';
  try {
    await client.execute('nbd-server-remove', { name: exportName, mode: 'hard' });
  } catch (err) {
    // Already gone (the server stopped, or removed by the operator).
    if (!(err instanceof QmpError)) throw err;
  }
  client.takeEvents();
  const t0 = performance.now();
  await client.execute('xen-set-replication', { enable: false, primary: false, failover: true });
  const commandMs = performance.now() - t0;
  await options.afterCommand?.();
  const deadline = t0 + timeoutMs;
  const colo = await isColoBlk(client);
  if (colo) {
    const ended = (data: unknown): boolean => {
      const d = data as { mode?: string; stage?: string };
      return d.mode === 'secondary' && (d.stage === 'done' || d.stage === 'failover-failed');
    };
    // The stage may already have ended before we listen: ask once first.
    let nodes = await client.execute<ReplicationNodeInfo[]>('x-colo-blk-query-replication');
    if (!nodes.some((n) => n.mode === 'secondary' && n.stage === 'failover')) {
      return finish(nodes, commandMs, performance.now() - t0);
    }
    await client.waitForEvent('COLO_BLK_REPLICATION_STAGE', { match: ended, timeoutMs });
    const doneMs = performance.now() - t0;
    nodes = await client.execute<ReplicationNodeInfo[]>('x-colo-blk-query-replication');
    return finish(nodes, commandMs, doneMs);
  }
  for (;;) {
    const nodes = await client.execute<Array<{ drv: string }>>('query-named-block-nodes', { flat: true });
    if (!nodes.some((n) => n.drv === 'mirror_top' || n.drv === 'commit_top')) break;
    if (performance.now() > deadline) throw new Error(`the failover commit did not finish within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 1));
  }
  const status = await client.execute<{ error: boolean; desc?: string }>('query-xen-replication-status');
  const result: FailoverResult = { stage: status.error ? 'failover-failed' : 'done', commandMs, doneMs: performance.now() - t0 };
  if (status.desc) result.error = status.desc;
  return result;
}

function finish(nodes: ReplicationNodeInfo[], commandMs: number, doneMs: number): FailoverResult {
  const node = nodes.find((n) => n.mode === 'secondary');
  if (!node) throw new Error('no secondary replication node');
  const result: FailoverResult = { stage: node.stage, commandMs, doneMs };
  const error = node.commit?.error ?? node.errors[0]?.desc;
  if (node.stage === 'failover-failed' && error) result.error = error;
  return result;
}

/**
 * Primary failover (the secondary is gone): detach the replication child
 * from the quorum, stop replication, delete the node, as the COLO recipe's
 * x-blockdev-change + drive_del does.
 */
export async function failoverPrimary(client: QmpClient, options: { quorum?: string; replicationNode?: string } = {}): Promise<void> {
  const quorum = options.quorum ?? 'colo-disk0';
  const node = options.replicationNode ?? 'replication0';
  const graph = await client.execute<{ nodes: Array<{ id: number; name: string }>; edges: Array<{ parent: number; child: number; name: string }> }>('x-debug-query-block-graph');
  const ids = new Map(graph.nodes.map((n) => [n.id, n.name]));
  const edge = graph.edges.find((e) => ids.get(e.parent) === quorum && ids.get(e.child) === node);
  if (edge) await client.execute('x-blockdev-change', { parent: quorum, child: edge.name });
  await client.execute('xen-set-replication', { enable: false, primary: true });
  await client.execute('blockdev-del', { 'node-name': node });
}

async function isColoBlk(client: QmpClient): Promise<boolean> {
  const version = await client.execute<{ package: string }>('query-version');
  return version.package.startsWith('colo-blk');
}
