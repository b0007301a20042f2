/**
 * The secondary side of a replication node: the start-time topology checks,
 * the internal backup job (copy-before-write into the hidden disk), the
 * checkpoint, the clean stop, the failover commit, and the view's I/O rules
 * in each stage.
 *
 * Invariant while RUNNING: a reader or writer of the view (active -> hidden
 * -> secondary disk) holds the clusters it touches shared in the
 * copy-before-write filter's `copyLock` for its whole path, unless no copy
 * can happen there any more (every cluster saved since the last checkpoint).
 * A copy holds its clusters exclusively until the hidden disk has the old
 * data, so no view request can see a cluster between "primary data landed"
 * and "old data saved". Graph changes under the node (filter removal, the
 * commit filter, the final swap) happen with the node quiesced.
 */
import { isAllocatedAbove, reaches } from '../block/chain.js';
import { BlockError } from '../block/errors.js';
import type { BlockGraph } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { RangeLock } from '../block/range-lock.js';
import { BackupJob } from '../jobs/backup.js';
import { ClusterBitmap } from '../jobs/bitmap.js';
import type { CbwFailure, CopyBeforeWriteNode } from '../jobs/cbw.js';
import { clusterSizeOf, DEFAULT_COPY_CLUSTER } from '../jobs/cluster-size.js';
import { ActiveCommitJob } from '../jobs/commit.js';
import { setReadOnly } from '../jobs/reopen.js';
import type { JobOutcome } from '../jobs/job.js';
import { jobRegistry } from '../jobs/registry.js';
import type { Logger } from '../util/log.js';
import { Errors } from './errors.js';
import { checkChain, emptyDisk, findTop } from './topology.js';
import type { DiskRole, FailedOperation, Stage } from './stage.js';

/** QEMU's names for the extra children attached at start. */
export const HIDDEN_CHILD = 'hidden disk';
export const SECONDARY_CHILD = 'secondary disk';

/** What the secondary machinery may do to its node; the node keeps the state. */
export interface ReplicationHost {
  readonly node: BlockNode;
  readonly graph: BlockGraph;
  readonly topId: string;
  readonly log: Logger;
  stage(): Stage;
  setStage(to: Stage): void;
  latch(disk: string, role: DiskRole, operation: FailedOperation, err: unknown, guestVisible: boolean): void;
  clearErrors(): void;
  emitCheckpoint(durationUs: number): void;
}

export interface CheckpointStats {
  /** Checkpoints completed since the node opened (start's own included). */
  count: number;
  lastUs: number;
  totalUs: number;
}

/** How the last failover commit went, kept after the job is gone. */
export interface CommitOutcome {
  status: 'running' | 'completed' | 'failed';
  offset: number;
  len: number;
  error?: string;
}

export class SecondaryReplication {
  readonly checkpoints: CheckpointStats = { count: 0, lastUs: 0, totalUs: 0 };
  private backupJob: BackupJob | null = null;
  /** Active-disk clusters the view wrote since the last checkpoint. */
  private activeWritten: ClusterBitmap | null = null;
  private activeGranularity = DEFAULT_COPY_CLUSTER;
  private lastCommit: CommitOutcome | null = null;
  private commitJob: ActiveCommitJob | null = null;
  private topNode: BlockNode | null = null;
  private lockGranularity = DEFAULT_COPY_CLUSTER;
  /** Serialises writes routed by allocation after a failed failover. */
  private readonly routeLock = new RangeLock();
  private failover: Promise<void> = Promise.resolve();
  /** Disks `start` reopened read-write, to be put back when the backup job ends (QEMU's orig_*_read_only). */
  private reopened: BlockNode[] = [];

  constructor(private readonly host: ReplicationHost) {}

  get hiddenDisk(): BlockNode | null {
    return this.host.node.children.get(HIDDEN_CHILD)?.node ?? null;
  }

  get secondaryDisk(): BlockNode | null {
    return this.host.node.children.get(SECONDARY_CHILD)?.node ?? null;
  }

  get backup(): BackupJob | null {
    return this.backupJob;
  }

  get commit(): ActiveCommitJob | null {
    return this.commitJob;
  }

  /** The running failover commit's progress, or how the last one ended. */
  get commitOutcome(): CommitOutcome | null {
    const job = this.commitJob;
    if (job) return { status: 'running', offset: job.progress.current, len: job.progress.total };
    return this.lastCommit ? { ...this.lastCommit } : null;
  }

  /** Bytes the view wrote into the active disk since the last checkpoint (at its cluster granularity). */
  get activeBytes(): number | undefined {
    const map = this.activeWritten;
    if (!map || !this.hiddenDisk) return undefined;
    const size = this.host.node.size;
    let bytes = map.count * this.activeGranularity;
    // The last cluster may be partial.
    if (map.length > 0 && map.get(map.length - 1)) bytes -= map.length * this.activeGranularity - size;
    return bytes;
  }

  /** Bytes the primary's writes saved into the hidden disk since the last checkpoint. */
  get hiddenBytes(): number | undefined {
    if (!this.hiddenDisk) return undefined;
    return this.backupJob?.cbw?.stats.copiedBytesSinceRearm ?? this.hiddenAtStop;
  }
  private hiddenAtStop = 0;

  settled(): Promise<void> {
    return this.failover;
  }

  /** Writes after a failed failover that wait for an overlapping one (they are serialised). */
  get routedWritesWaiting(): number {
    return this.routeLock.waiting;
  }

  implicitNodes(): BlockNode[] {
    const out: BlockNode[] = [];
    const cbw = this.backupJob?.cbw;
    if (cbw) out.push(cbw);
    const mirrorTop = this.commitJob?.topFilter;
    if (mirrorTop) out.push(mirrorTop);
    return out;
  }

  blocksTop(node: BlockNode): boolean {
    return this.backupJob !== null && this.topNode === node;
  }

  // --------------------------------------------------------------- start

  /** QEMU's checks in QEMU's order, then the backup job, RUNNING, and one checkpoint. */
  async start(): Promise<void> {
    const { node, graph } = this.host;
    const { active, hidden, secondary } = checkChain(node);
    // An inline backing file opens read-only; QEMU reopens both disks read-write here.
    for (const disk of [hidden, secondary]) {
      if (!disk.readOnly) continue;
      try {
        await setReadOnly(disk, false);
      } catch (err) {
        await this.restoreReadOnly();
        throw Errors.reopenFailed(err);
      }
      this.reopened.push(disk);
    }

    node.setChild(HIDDEN_CHILD, hidden);
    node.setChild(SECONDARY_CHILD, secondary);
    const top = findTop(graph, this.host.topId);
    if (!top || top.nodeParents.length > 0 || !reaches(top, node)) {
      this.detachDisks();
      await this.restoreReadOnly();
      throw Errors.invalidTop();
    }

    const job = new BackupJob(graph, {
      id: jobRegistry(graph).uniqueId(`colo-backup-${node.nodeName}`),
      source: secondary,
      target: hidden,
      internal: true,
      // The node's own "secondary disk" edge stays on the disk: after a
      // failover it is the base of the commit, never a copy trigger.
      keepOnSource: [node],
      onFailure: (failure) => this.onCopyFailure(failure),
    });
    try {
      await job.start();
    } catch (err) {
      this.detachDisks();
      await this.restoreReadOnly();
      throw Errors.backupStartFailed(err);
    }
    this.backupJob = job;
    this.topNode = top;
    this.lockGranularity = Math.max(job.cbw!.copyClusterSize, clusterSizeOf(active) ?? 0, clusterSizeOf(hidden) ?? 0);
    this.activeGranularity = clusterSizeOf(active) ?? DEFAULT_COPY_CLUSTER;
    this.activeWritten = new ClusterBitmap(Math.ceil(active.size / this.activeGranularity));
    this.lastCommit = null;
    void job.done.then(() => this.onBackupEnded(job)).then(() => this.restoreReadOnly());
    this.host.setStage('running');
    try {
      // Drops whatever the overlays held from an earlier run.
      await this.checkpoint();
    } catch (err) {
      // QEMU stays RUNNING here with stale overlays; colo-blk undoes the start.
      await this.cancelBackup();
      this.detachDisks();
      this.host.setStage('none');
      throw err;
    }
    this.host.log.info('replication-started', { active: active.nodeName, hidden: hidden.nodeName, secondary: secondary.nodeName, top: top.nodeName });
  }

  // ---------------------------------------------------------- checkpoint

  /**
   * Re-arm copy-before-write, empty active, empty hidden, in QEMU's order,
   * with view I/O and primary writes held off for the whole sequence.
   */
  async checkpoint(): Promise<void> {
    const job = this.backupJob;
    const cbw = job?.cbw;
    if (!job || !cbw) throw Errors.backupCancelled();
    const started = performance.now();
    await this.withQuiesced([this.host.node, cbw, this.secondaryDisk!], async () => {
      job.checkpoint();
      const active = this.host.node.file!;
      if (active.isClosed) throw Errors.activeEjected(active.nodeName);
      await emptyDisk(active);
      this.activeWritten?.clearAll();
      const hidden = this.hiddenDisk!;
      if (hidden.isClosed) throw Errors.hiddenEjected(hidden.nodeName);
      await emptyDisk(hidden);
    });
    const us = Math.round((performance.now() - started) * 1000);
    this.checkpoints.count++;
    this.checkpoints.lastUs = us;
    this.checkpoints.totalUs += us;
    this.host.log.debug('replication-checkpoint', { us });
    this.host.emitCheckpoint(us);
  }

  // ---------------------------------------------------------------- stop

  async stop(failover: boolean): Promise<void> {
    await this.withQuiesced([this.host.node], async () => {
      // Intentional: colo-blk latches no "backup cancelled" error here.
      await this.cancelBackup();
      if (failover) await this.startFailover();
      else await this.stopClean();
    });
  }

  /**
   * Stop without failover: the overlays are emptied so the view is the
   * secondary disk (the primary's state), the node then reads and writes the
   * secondary disk directly, and no error is latched.
   */
  private async stopClean(): Promise<void> {
    const node = this.host.node;
    const active = node.file!;
    const hidden = this.hiddenDisk!;
    const secondary = this.secondaryDisk!;
    for (const disk of [active, hidden]) {
      try {
        await emptyDisk(disk);
      } catch (err) {
        // Replication is stopped either way; the node keeps the overlays it could not empty.
        this.host.latch(disk.nodeName, disk === active ? 'active' : 'hidden', 'make-empty', err, false);
        this.host.setStage('done');
        throw err;
      }
    }
    node.setChild('file', secondary);
    this.detachDisks();
    this.host.clearErrors();
    this.host.setStage('done');
    await this.releaseOverlays(active, hidden);
  }

  private async startFailover(): Promise<void> {
    const { node, graph } = this.host;
    this.host.setStage('failover');
    const active = node.file!;
    const hidden = this.hiddenDisk!;
    const job = new ActiveCommitJob(graph, {
      id: jobRegistry(graph).uniqueId(`colo-commit-${node.nodeName}`),
      top: active,
      base: this.secondaryDisk!,
      internal: true,
      // Measured with bench:pair (failover, 64+64 MiB): two 4 MiB copies at a
      // time commit as fast as more, smaller ones and leave the guest's
      // requests less to queue behind.
      maxChunk: 4 << 20,
      parallel: 2,
    });
    try {
      await job.start();
    } catch (err) {
      // QEMU stays in FAILOVER with no job; colo-blk says what happened.
      this.host.latch(this.secondaryDisk!.nodeName, 'secondary', 'commit', err, false);
      this.host.setStage('failover-failed');
      throw Errors.commitStartFailed(err);
    }
    this.commitJob = job;
    this.host.log.info('replication-failover-started', { job: job.id, active: active.nodeName, hidden: hidden.nodeName });
    this.failover = job.done.then((outcome) => this.onCommitEnded(job, outcome, active, hidden));
  }

  private async onCommitEnded(job: ActiveCommitJob, outcome: JobOutcome, active: BlockNode, hidden: BlockNode): Promise<void> {
    this.commitJob = null;
    const progress = job.progress;
    this.lastCommit = { status: outcome.ok ? 'completed' : 'failed', offset: progress.current, len: progress.total };
    if (outcome.error) this.lastCommit.error = outcome.error.message;
    if (outcome.ok) {
      // The job already put the secondary disk in the active disk's place.
      this.detachDisks();
      this.host.clearErrors();
      this.host.setStage('done');
      this.host.log.info('replication-failover-done', { bytes: job.progress.current });
      await this.releaseOverlays(active, hidden);
      return;
    }
    const failed = job.failure?.node ?? active.nodeName;
    const error = outcome.error ?? new BlockError('ECANCELED', 'the failover commit was cancelled');
    this.host.latch(failed, this.roleOf(failed), 'commit', error, false);
    this.host.setStage('failover-failed');
    this.host.log.error('replication-failover-failed', { error: error.message });
  }

  /** On close: jobs stop, extra children go. Nothing is emptied (the next start does that). */
  async shutdown(): Promise<void> {
    const commit = this.commitJob;
    if (commit) await commit.cancelAndWait();
    await this.failover;
    await this.cancelBackup();
    this.detachDisks();
  }

  // ----------------------------------------------------------------- I/O

  readRunning(offset: number, buf: Buffer): Promise<void> {
    const file = this.host.node.file!;
    const cbw = this.backupJob?.cbw;
    if (!cbw) return file.read(offset, buf);
    return this.underCopyLock(cbw, offset, buf.length, () => file.read(offset, buf));
  }

  writeRunning(offset: number, buf: Buffer): Promise<void> {
    const file = this.host.node.file!;
    const written = this.activeWritten;
    if (written) {
      const g = this.activeGranularity;
      written.setRange(Math.floor(offset / g), Math.ceil((offset + buf.length) / g));
    }
    const cbw = this.backupJob?.cbw;
    if (!cbw) return file.write(offset, buf);
    // A partial-cluster write makes the active disk read the rest of the
    // cluster through hidden and secondary: it needs the lock as much as a read.
    return this.underCopyLock(cbw, offset, buf.length, () => file.write(offset, buf));
  }

  /** FAILOVER_FAILED (spec section 3): each run goes where reads will look for it. */
  async writeRouted(offset: number, buf: Buffer): Promise<void> {
    const top = this.host.node.file!;
    const base = this.secondaryDisk!;
    const [start, end] = this.aligned(offset, buf.length);
    const guard = await this.routeLock.acquire(start, end, 'exclusive');
    try {
      for (let done = 0; done < buf.length;) {
        const run = await isAllocatedAbove(top, base, offset + done, buf.length - done);
        const part = done === 0 && run.length === buf.length ? buf : buf.subarray(done, done + run.length);
        await (run.allocated ? top : base).write(offset + done, part);
        done += run.length;
      }
    } finally {
      guard.release();
    }
  }

  /** Flush reaches every child, as QEMU's generic flush does for children with write permission. */
  async flushChildren(): Promise<void> {
    const nodes = new Set<BlockNode>();
    for (const ref of this.host.node.children.values()) nodes.add(ref.node);
    const results = await Promise.allSettled([...nodes].map((n) => n.flush()));
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  // ------------------------------------------------------------ internals

  private underCopyLock(cbw: CopyBeforeWriteNode, offset: number, length: number, io: () => Promise<void>): Promise<void> {
    const [start, end] = this.aligned(offset, length);
    // Every cluster here was saved since the checkpoint: no copy can run, no lock needed.
    if (!cbw.mayCopy(start, end - start)) return io();
    const guard = cbw.copyLock.tryAcquire(start, end, 'shared');
    if (guard) return io().finally(() => guard.release());
    return cbw.copyLock.acquire(start, end, 'shared').then((g) => io().finally(() => g.release()));
  }

  private aligned(offset: number, length: number): [number, number] {
    const g = this.lockGranularity;
    const start = Math.floor(offset / g) * g;
    const end = Math.min(Math.ceil((offset + length) / g) * g, this.host.node.size);
    return [start, Math.max(end, start + 1)];
  }

  private async cancelBackup(): Promise<void> {
    const job = this.backupJob;
    if (!job) return;
    this.hiddenAtStop = job.cbw?.stats.copiedBytesSinceRearm ?? 0;
    // Cleared first, so its completion is not taken for an unexpected end.
    this.backupJob = null;
    this.topNode = null;
    await job.cancelAndWait();
    await this.restoreReadOnly();
  }

  /** QEMU's backup_job_cleanup: the disks go back to read-only if they were; errors are ignored, as there. */
  private async restoreReadOnly(): Promise<void> {
    const disks = this.reopened;
    this.reopened = [];
    for (const disk of disks) {
      if (disk.isClosed) continue;
      await setReadOnly(disk, true).catch((err: unknown) => {
        this.host.log.warn('replication-reopen-read-only-failed', { disk: disk.nodeName, error: err });
      });
    }
  }

  /** QEMU's backup_job_completed: an end nobody asked for is an error. */
  private onBackupEnded(job: BackupJob): void {
    if (this.backupJob !== job) return;
    this.backupJob = null;
    this.topNode = null;
    if (this.host.stage() !== 'failover') {
      this.host.latch(job.source.nodeName, 'secondary', 'backup', new BlockError('EIO', 'The backup job is cancelled unexpectedly'), false);
    }
  }

  /**
   * A primary write the secondary could not apply faithfully (old data not
   * saved, or the write itself failed) leaves the pair diverged. QEMU only
   * fails the NBD request; colo-blk also latches it here, so the secondary's
   * get-error (which COLO checks before every checkpoint) reports it.
   */
  private onCopyFailure(failure: CbwFailure): void {
    const role: DiskRole = failure.operation === 'copy-write' ? 'hidden' : 'secondary';
    const operation: FailedOperation = failure.operation.startsWith('copy-') ? 'copy-before-write' : failure.operation as FailedOperation;
    this.host.latch(failure.node.nodeName, role, operation, failure.error, false);
  }

  /** The role of a disk by node name, for error reports. */
  private roleOf(nodeName: string): DiskRole {
    const file = this.host.node.file;
    if (this.commitJob?.top.nodeName === nodeName || file?.nodeName === nodeName) return 'active';
    if (this.hiddenDisk?.nodeName === nodeName) return 'hidden';
    return 'secondary';
  }

  private detachDisks(): void {
    this.host.node.setChild(HIDDEN_CHILD, null);
    this.host.node.setChild(SECONDARY_CHILD, null);
  }

  /** Active and hidden left the node: close them unless someone else holds or owns them. */
  private async releaseOverlays(active: BlockNode, hidden: BlockNode): Promise<void> {
    const { graph } = this.host;
    for (const disk of [active, hidden]) {
      if (disk.isClosed || disk.parents.size > 0 || graph.isMonitorOwned(disk)) continue;
      try {
        await graph.closeTree(disk);
      } catch (err) {
        this.host.log.warn('replication-release-failed', { disk: disk.nodeName, error: err });
      }
    }
  }

  private async withQuiesced<T>(nodes: BlockNode[], fn: () => Promise<T>): Promise<T> {
    const held: BlockNode[] = [];
    try {
      for (const n of nodes) {
        const drained = n.quiesce();
        held.push(n);
        await drained;
      }
      return await fn();
    } finally {
      for (const n of held.reverse()) n.resume();
    }
  }
}
