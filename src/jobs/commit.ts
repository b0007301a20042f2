/**
 * Active commit: merges everything above `base` in the chain of `top` (the
 * top and every intermediate layer) into `base` while the top keeps serving
 * reads and writes, then puts `base` in the top's place under all its
 * parents. This is QEMU's commit_active_start (a mirror job in commit mode,
 * background copy, auto-complete), which replication uses for failover.
 *
 * The initial dirty set is every range allocated above base; writes through
 * the filter during the job add to it. Copies of overlapping ranges are
 * serialised so an older copy can never land after a newer one. The last
 * pass, the flush and the swap happen with the filter quiesced, so no write
 * can slip between "clean" and "swapped".
 */
import { isAllocatedAbove, chainContains } from '../block/chain.js';
import { BlockError } from '../block/errors.js';
import type { BlockGraph } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { RangeLock } from '../block/range-lock.js';
import { setReadOnly } from './reopen.js';
import { ClusterBitmap } from './bitmap.js';
import { BufferPool } from './buffer-pool.js';
import { CommitTopNode } from './commit-filter.js';
import { Job, type RunResult } from './job.js';
import { jobRegistry } from './registry.js';
import { nextTurn } from '../util/turn.js';

export interface CommitJobOptions {
  id?: string;
  top: BlockNode;
  base: BlockNode;
  internal?: boolean;
  /** Dirty-tracking granularity in bytes (QEMU's mirror default is 64 KiB). */
  granularity?: number;
  /** Largest single copy. */
  maxChunk?: number;
  /** Copies in flight at once. */
  parallel?: number;
}

/** Where a failed commit failed, for error reports that name the disk. */
export interface CommitFailure {
  operation: 'read' | 'write' | 'flush' | 'status';
  node: string;
  code: BlockError['code'];
  message: string;
}

class Cancelled extends Error {}

/**
 * Longest stretch the allocation scan runs without letting other work in.
 * A guest request crosses several event-loop turns (decode, copy-on-write
 * read, write, metadata), and each of them can wait behind one slice.
 */
const SCAN_SLICE_MS = 0.25;
/** Longest range one allocation probe covers. */
const SCAN_STEP = 8 << 20;

export class ActiveCommitJob extends Job {
  readonly top: BlockNode;
  readonly base: BlockNode;
  /** Set when the job failed. */
  failure: CommitFailure | null = null;

  private filter: CommitTopNode | null = null;
  private readonly granularity: number;
  private readonly maxChunkGranules: number;
  private readonly parallel: number;
  private readonly dirty: ClusterBitmap;
  private readonly copyLock = new RangeLock();
  private readonly inflight = new Set<Promise<void>>();
  private inflightBytes = 0;
  private copied = 0;
  private cursor = 0;
  private firstError: unknown = null;
  /** Resolves the copy loop's wait: a copy ended, or cancel. */
  private wakeCopier: (() => void) | null = null;
  private readonly buffers: BufferPool;
  /** The base was read-only and is reopened read-write for the job (QEMU's base_ro). */
  private baseWasReadOnly = false;

  constructor(graph: BlockGraph, options: CommitJobOptions) {
    const id = options.id ?? jobRegistry(graph).uniqueId(`commit-${options.top.nodeName}`);
    super(graph, id, 'commit', options.internal ?? false, options.top.nodeName);
    this.top = options.top;
    this.base = options.base;
    this.granularity = options.granularity ?? 65536;
    this.maxChunkGranules = Math.max(1, Math.floor((options.maxChunk ?? 1 << 20) / this.granularity));
    this.parallel = options.parallel ?? 4;
    this.dirty = new ClusterBitmap(Math.ceil(this.top.size / this.granularity));
    this.buffers = new BufferPool(this.maxChunkGranules * this.granularity, this.parallel);
  }

  /** The filter above the top while the job runs. */
  get topFilter(): CommitTopNode | null {
    return this.filter;
  }

  /** Bytes still to copy (dirty and in flight). */
  get remaining(): number {
    return Math.min(this.dirty.count * this.granularity, this.top.size) + this.inflightBytes;
  }

  protected async prepare(): Promise<void> {
    if (this.top === this.base) throw new BlockError('EINVAL', 'Cannot commit an image into itself');
    if (!chainContains(this.top, this.base)) {
      throw new BlockError('EINVAL', `'${this.base.nodeName}' is not in the backing chain of '${this.top.nodeName}'`);
    }
    if (this.base.size < this.top.size) {
      throw new BlockError('EINVAL', `Base node '${this.base.nodeName}' is smaller than '${this.top.nodeName}'`);
    }
    if (this.base.readOnly) {
      await setReadOnly(this.base, false);
      this.baseWasReadOnly = true;
    }
    const filter = new CommitTopNode(this.top, (offset, length) => this.markDirty(offset, length));
    // Quiesce the top's node parents too: a request parked at the top's own
    // gate would otherwise reach it past the new filter, unobserved.
    const quiesced = [...this.top.nodeParents, this.top];
    for (const n of quiesced) await n.quiesce();
    try {
      this.graph.replaceNode(this.top, filter, new Set([filter]));
    } finally {
      for (const n of quiesced.reverse()) n.resume();
    }
    this.filter = filter;
  }

  protected async run(): Promise<RunResult> {
    try {
      // The command that started the job (a failover) answers before the scan.
      await nextTurn();
      void this.cancellation().then(() => this.wake());
      await this.scanAllocated();
      await this.copyUntilClean();
      this.markReady();
      await this.finish();
      return 'completed';
    } catch (err) {
      await this.drainCopies();
      await this.restoreTop();
      if (err instanceof Cancelled) return 'cancelled';
      throw err;
    } finally {
      // As mirror_exit_common: a base that was read-only goes back to read-only.
      if (this.baseWasReadOnly) await setReadOnly(this.base, true).catch(() => undefined);
    }
  }

  // ------------------------------------------------------------ the work

  private markDirty(offset: number, length: number): void {
    const g = this.granularity;
    this.dirty.setRange(Math.floor(offset / g), Math.ceil((offset + length) / g));
    this.reportProgress();
  }

  private reportProgress(): void {
    this.setProgress(this.copied, this.copied + this.remaining);
  }

  private wake(): void {
    const wakeCopier = this.wakeCopier;
    this.wakeCopier = null;
    wakeCopier?.();
  }

  /** Everything allocated in the top or an intermediate layer is dirty to begin with. */
  private async scanAllocated(): Promise<void> {
    const size = this.top.size;
    let slice = performance.now();
    for (let offset = 0; offset < size;) {
      if (this.cancelRequested) throw new Cancelled();
      // Cached metadata answers without a system call, so the scan would run
      // to its end in one go; the guest's requests (a failover's first write)
      // must not wait behind it.
      if (performance.now() - slice > SCAN_SLICE_MS) {
        await nextTurn();
        slice = performance.now();
      }
      let run;
      try {
        // Bounded steps: each probe walks the upper layers' tables from `offset`
        // to its end, so an unbounded one would walk a long unallocated run in
        // the top again for every short run found below it.
        run = await isAllocatedAbove(this.top, this.base, offset, Math.min(size - offset, SCAN_STEP));
      } catch (err) {
        throw this.fail('status', this.top, err);
      }
      if (run.allocated) this.markDirty(offset, run.length);
      offset += run.length;
    }
    this.reportProgress();
  }

  private async copyUntilClean(): Promise<void> {
    for (;;) {
      if (this.firstError) throw this.firstError;
      if (this.cancelRequested) throw new Cancelled();
      while (this.inflight.size < this.parallel && this.dirty.count > 0) this.startNextCopy();
      if (this.inflight.size === 0 && this.dirty.count === 0) return;
      // One fresh promise per wait: racing the long-lived cancellation promise
      // on every pass would leave a reaction on it per pass for the job's life.
      await new Promise<void>((resolve) => { this.wakeCopier = resolve; });
    }
  }

  private startNextCopy(): void {
    let g0 = this.dirty.nextSet(this.cursor);
    if (g0 < 0) g0 = this.dirty.nextSet(0);
    if (g0 < 0) return;
    let g1 = g0 + 1;
    while (g1 < this.dirty.length && g1 - g0 < this.maxChunkGranules && this.dirty.get(g1)) g1++;
    this.cursor = g1 >= this.dirty.length ? 0 : g1;
    // Cleared before the read: a write landing after it marks the range again.
    this.dirty.clearRange(g0, g1);
    const copy = this.copyChunk(g0, g1).catch((err: unknown) => {
      this.dirty.setRange(g0, g1);
      this.firstError ??= err;
    });
    this.inflight.add(copy);
    const ended = (): void => {
      this.inflight.delete(copy);
      this.wake();
    };
    copy.then(ended, ended);
  }

  private async copyChunk(g0: number, g1: number): Promise<void> {
    const start = g0 * this.granularity;
    const end = Math.min(g1 * this.granularity, this.top.size);
    const length = end - start;
    this.inflightBytes += length;
    const guard = await this.copyLock.acquire(start, end, 'exclusive');
    const data = this.buffers.take(length);
    try {
      // Small reads run inline on the event loop; let the guest's requests in first.
      await nextTurn();
      try {
        await this.top.read(start, data);
      } catch (err) {
        throw this.fail('read', this.top, err);
      }
      try {
        await this.base.write(start, data);
      } catch (err) {
        throw this.fail('write', this.base, err);
      }
      this.copied += length;
    } finally {
      this.buffers.give(data);
      guard.release();
      this.inflightBytes -= length;
    }
    this.reportProgress();
  }

  /** Last pass with writers held off, flush, then base takes the top's place. */
  private async finish(): Promise<void> {
    const filter = this.filter!;
    await this.flushBase();
    await filter.quiesce();
    try {
      while (this.dirty.count > 0) {
        this.startNextCopy();
        await Promise.all([...this.inflight]);
        if (this.firstError) throw this.firstError;
      }
      await this.flushBase();
      this.graph.replaceNode(filter, this.base);
      filter.retire(this.base);
      this.filter = null;
    } finally {
      filter.resume();
    }
    this.reportProgress();
  }

  private async flushBase(): Promise<void> {
    try {
      await this.base.flush();
    } catch (err) {
      throw this.fail('flush', this.base, err);
    }
  }

  private async drainCopies(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
  }

  /** After failure or cancel: the filter goes, the top stays where it was. */
  private async restoreTop(): Promise<void> {
    const filter = this.filter;
    if (!filter) return;
    await filter.quiesce();
    try {
      this.graph.replaceNode(filter, this.top);
      filter.retire(this.top);
      this.filter = null;
    } finally {
      filter.resume();
    }
  }

  private fail(operation: CommitFailure['operation'], node: BlockNode, err: unknown): BlockError {
    const cause = BlockError.from(err, `${operation} of ${node.nodeName}`);
    this.failure ??= { operation, node: node.nodeName, code: cause.code, message: cause.message };
    return new BlockError(cause.code, `commit of ${this.top.nodeName} into ${this.base.nodeName} failed: ${cause.message}`, { cause });
  }
}
