/**
 * QEMU's ReplicationOps list, one per BlockGraph: every replication node
 * registers when it opens and leaves when it closes, newest first. The `*All`
 * operations visit the nodes in that order and stop at the first error, as
 * replication_*_all do. The QMP wrappers (`setReplication`, `queryStatus`,
 * `doCheckpoint`) reproduce the commands' own quirks.
 */
import type { BlockGraph } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { jobRegistry } from '../jobs/registry.js';
import { TypedEmitter } from '../jobs/typed-emitter.js';
import { Errors, ReplicationError } from './errors.js';
import type { ReplicationEvents } from './events.js';
import type { ReplicationNode } from './node.js';
import type { ReplicationMode } from './stage.js';
import type { ReplicationNodeStatus } from './status.js';

export interface SetReplicationArgs {
  enable: boolean;
  primary: boolean;
  failover?: boolean;
}

/** query-xen-replication-status's ReplicationStatus. */
export interface XenReplicationStatus {
  error: boolean;
  desc?: string;
}

export class ReplicationRegistry {
  readonly events = new TypedEmitter<ReplicationEvents>();
  private nodes: ReplicationNode[] = [];
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly graph: BlockGraph) {
    const jobs = jobRegistry(graph).events;
    jobs.on('status', ({ job, status }) => {
      this.events.emit('job-status', { id: job.id, type: job.type, status, internal: job.internal });
    });
    jobs.on('progress', ({ job, current, total }) => {
      this.events.emit('job-progress', { id: job.id, type: job.type, current, total, internal: job.internal });
    });
    jobs.on('completed', ({ job, outcome }) => {
      const p = job.progress;
      const payload: ReplicationEvents['job-completed'] = {
        id: job.id, type: job.type, ok: outcome.ok, cancelled: outcome.cancelled,
        len: p.total, offset: p.current, internal: job.internal,
      };
      if (outcome.error) payload.error = outcome.error.message;
      this.events.emit('job-completed', payload);
    });
  }

  /** Replication nodes, newest first. */
  list(): readonly ReplicationNode[] {
    return [...this.nodes];
  }

  /** @internal Called by the node when it opens. */
  register(node: ReplicationNode): void {
    this.nodes.unshift(node);
  }

  /** @internal Called by the node when it closes. */
  unregister(node: ReplicationNode): void {
    this.nodes = this.nodes.filter((n) => n !== node);
  }

  // ----------------------------------------------------- replication_*_all

  startAll(mode: ReplicationMode): Promise<void> {
    return this.serial(async () => {
      for (const node of this.list()) await node.start(mode);
    });
  }

  checkpointAll(): Promise<void> {
    return this.serial(async () => {
      for (const node of this.list()) await node.checkpoint();
    });
  }

  /** Throws the first node's error; QEMU's get_error reads state only, so this is synchronous. */
  getErrorAll(): void {
    for (const node of this.list()) node.getError();
  }

  stopAll(failover: boolean): Promise<void> {
    return this.serial(async () => {
      for (const node of this.list()) await node.stop(failover);
    });
  }

  // ------------------------------------------------------- QMP semantics

  /** xen-set-replication, with QEMU's argument rule and its silent failover. */
  async setReplication(args: SetReplicationArgs): Promise<void> {
    if (args.enable) {
      if (args.failover !== undefined) throw Errors.failoverOnlyForStop();
      await this.startAll(args.primary ? 'primary' : 'secondary');
      return;
    }
    if (args.failover === true) {
      // QEMU passes no error pointer here: every failure is dropped.
      await this.stopAll(true).catch(() => undefined);
      return;
    }
    await this.stopAll(false);
  }

  /**
   * get_error for QMP: first waits until every write a primary node
   * acknowledged has been answered by its secondary (see ForwardWindow), so
   * the answer covers them, as QEMU's does.
   */
  async getErrorAfterForwarding(): Promise<void> {
    await Promise.all(this.list().map((n) => n.window?.settled()));
    this.getErrorAll();
  }

  /** query-xen-replication-status. */
  async queryStatus(): Promise<XenReplicationStatus> {
    try {
      await this.getErrorAfterForwarding();
      return { error: false };
    } catch (err) {
      if (!(err instanceof ReplicationError)) throw err;
      return { error: true, desc: err.message };
    }
  }

  /** xen-colo-do-checkpoint. */
  doCheckpoint(): Promise<void> {
    return this.checkpointAll();
  }

  // ------------------------------------------------------ colo-blk extras

  /** Detailed status of every node, newest first (x-colo-blk-query-replication). */
  status(): ReplicationNodeStatus[] {
    return this.list().map((node) => node.status());
  }

  /** Resolves when no node is failing over any more. */
  async settled(): Promise<void> {
    for (const node of this.list()) await node.failoverSettled();
  }

  /** Filter nodes the replication machinery inserted (copy-before-write, mirror_top). */
  implicitNodes(): BlockNode[] {
    return this.list().flatMap((n) => n.implicitNodes());
  }

  /** The op-blocker reason QEMU puts on a running secondary's top node, if any. */
  opBlocker(node: BlockNode): string | undefined {
    for (const n of this.list()) if (n.blocks(node)) return 'Block device is in use by internal backup job';
    return undefined;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }
}

const registries = new WeakMap<BlockGraph, ReplicationRegistry>();

/** The registry of a graph (created on first use), so the block layer need not know about replication. */
export function replicationRegistry(graph: BlockGraph): ReplicationRegistry {
  let r = registries.get(graph);
  if (!r) {
    r = new ReplicationRegistry(graph);
    registries.set(graph, r);
  }
  return r;
}
