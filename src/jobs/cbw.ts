/**
 * The copy-before-write filter (QEMU's `copy-before-write` node). Inserted
 * above a source disk, it saves the old content of every cluster a write,
 * write-zeroes or discard is about to change into a target (the hidden disk),
 * once per cluster until the next `rearm` (first write wins).
 *
 * Hot path: a write whose clusters were all saved already costs one bitmap
 * scan and goes straight down with the caller's buffer; no await, no copy.
 * Copies of different clusters run in parallel; a write to a cluster whose
 * copy is in flight waits for that copy only.
 *
 * `copyLock` is how readers of a view that shows the target over the source
 * stay consistent: such a reader holds the clusters it reads shared for its
 * whole path, and a copy holds its clusters exclusively from reading the old
 * data until the target has it. So a reader that found a cluster missing in
 * the target never reads the source after new data landed there.
 */
import { BlockError } from '../block/errors.js';
import { BlockNode, type BlockStatus } from '../block/node.js';
import { RangeLock } from '../block/range-lock.js';
import { ClusterBitmap } from './bitmap.js';
import { BufferPool } from './buffer-pool.js';

/** The most a single copy moves at once, so one huge write does not serialise a whole region. */
const MAX_COPY_BYTES = 1 << 20;

export interface CopyFailure {
  /** `read` of the old data from the source, or `write` of it into the target. */
  stage: 'read' | 'write';
  node: string;
  code: BlockError['code'];
  message: string;
}

/** Something the filter could not do: save old data, or pass a request down to the source. */
export interface CbwFailure {
  operation: 'copy-read' | 'copy-write' | 'write' | 'write-zeroes' | 'discard';
  node: BlockNode;
  error: BlockError;
}

export type CbwFailureListener = (failure: CbwFailure) => void;

export interface CbwStats {
  /** Copy operations finished (each moves one or more clusters). */
  copies: number;
  copiedBytes: number;
  copiedBytesSinceRearm: number;
  copyErrors: number;
  lastError: CopyFailure | null;
}

export class CopyBeforeWriteNode extends BlockNode {
  readonly driver = 'copy-before-write';
  override readonly isFilter = true;
  /** Readers of target-over-source views hold this shared; copies hold it exclusively. */
  readonly copyLock = new RangeLock();
  readonly copyClusterSize: number;
  readonly stats: CbwStats = { copies: 0, copiedBytes: 0, copiedBytesSinceRearm: 0, copyErrors: 0, lastError: null };

  /** Set bit = the old content of that cluster still has to be saved. */
  private readonly pending: ClusterBitmap;
  private readonly inflight = new Map<number, Promise<void>>();
  private readonly maxRunClusters: number;
  private readonly length: number;
  private buffers = new BufferPool(MAX_COPY_BYTES, 8);
  /** After removal from the graph, requests still parked at our gate go here untouched. */
  private retiredTo: BlockNode | null = null;

  constructor(
    private readonly source: BlockNode,
    private readonly target: BlockNode,
    copyClusterSize: number,
    private readonly onFailure: CbwFailureListener | null = null,
  ) {
    super(undefined, false);
    if (!Number.isInteger(Math.log2(copyClusterSize))) throw new BlockError('EINVAL', 'copy cluster size must be a power of two');
    this.copyClusterSize = copyClusterSize;
    this.length = source.size;
    this.pending = new ClusterBitmap(Math.ceil(this.length / copyClusterSize), true);
    this.maxRunClusters = Math.max(1, Math.floor(MAX_COPY_BYTES / copyClusterSize));
    if (copyClusterSize > MAX_COPY_BYTES) this.buffers = new BufferPool(copyClusterSize, 8);
    this.setChild('file', source);
  }

  override get size(): number {
    return this.retiredTo ? this.retiredTo.size : this.length;
  }

  override get filename(): string {
    return this.source.filename;
  }

  /** Clusters whose old data has not been saved since the last rearm. */
  get pendingClusters(): number {
    return this.pending.count;
  }

  get copiesInFlight(): number {
    return new Set(this.inflight.values()).size;
  }

  /** Every cluster must be saved again before it changes (a checkpoint). The caller quiesces us. */
  rearm(): void {
    if (this.inflight.size > 0) throw new BlockError('EBUSY', 'copy-before-write rearmed with copies in flight');
    this.pending.setAll();
    this.stats.copiedBytesSinceRearm = 0;
  }

  /** Whether a write to [offset, offset+length) could still trigger a copy. */
  mayCopy(offset: number, length: number): boolean {
    const cs = this.copyClusterSize;
    return this.pending.anySet(Math.floor(offset / cs), Math.ceil((offset + length) / cs));
  }

  /** Takes the node out of service: from now on it passes everything to `to`. */
  retire(to: BlockNode): void {
    this.retiredTo = to;
    this.setChild('file', null);
  }

  // ------------------------------------------------------------------- I/O

  protected doRead(offset: number, buf: Buffer): Promise<void> {
    return (this.retiredTo ?? this.source).read(offset, buf);
  }

  protected doWrite(offset: number, buf: Buffer, flags: number): Promise<void> {
    if (this.retiredTo) return this.retiredTo.write(offset, buf, flags);
    const copying = this.copyBefore(offset, buf.length);
    const write = (): Promise<void> => this.observe('write', this.source.write(offset, buf, flags));
    return copying === null ? write() : copying.then(write);
  }

  protected override doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    if (this.retiredTo) return this.retiredTo.writeZeroes(offset, length, flags);
    const copying = this.copyBefore(offset, length);
    const write = (): Promise<void> => this.observe('write-zeroes', this.source.writeZeroes(offset, length, flags));
    return copying === null ? write() : copying.then(write);
  }

  protected override doDiscard(offset: number, length: number): Promise<void> {
    if (this.retiredTo) return this.retiredTo.discard(offset, length);
    const copying = this.copyBefore(offset, length);
    const discard = (): Promise<void> => this.observe('discard', this.source.discard(offset, length));
    return copying === null ? discard() : copying.then(discard);
  }

  protected doFlush(): Promise<void> {
    return (this.retiredTo ?? this.source).flush();
  }

  protected override doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    return (this.retiredTo ?? this.source).blockStatus(offset, length);
  }

  /** Reports a failed pass-down to the listener; the caller still gets the error. */
  private observe(operation: 'write' | 'write-zeroes' | 'discard', request: Promise<void>): Promise<void> {
    if (!this.onFailure) return request;
    return request.catch((err: unknown) => {
      const error = BlockError.from(err, `${operation} of ${this.source.nodeName}`);
      this.onFailure?.({ operation, node: this.source, error });
      throw error;
    });
  }

  // ------------------------------------------------------------- copying

  /** Null when every touched cluster is saved already (the hot path). */
  private copyBefore(offset: number, length: number): Promise<void> | null {
    const cs = this.copyClusterSize;
    const first = Math.floor(offset / cs);
    const end = Math.ceil((offset + length) / cs);
    if (!this.pending.anySet(first, end)) return null;
    return this.copyClusters(first, end);
  }

  private async copyClusters(first: number, end: number): Promise<void> {
    for (;;) {
      const mine: Array<Promise<void>> = [];
      const others: Array<Promise<void>> = [];
      let c = this.pending.nextSet(first, end);
      while (c >= 0) {
        const running = this.inflight.get(c);
        if (running) {
          others.push(running);
          c = this.pending.nextSet(c + 1, end);
          continue;
        }
        let stop = c + 1;
        while (stop < end && stop - c < this.maxRunClusters && this.pending.get(stop) && !this.inflight.has(stop)) stop++;
        mine.push(this.startCopy(c, stop));
        c = this.pending.nextSet(stop, end);
      }
      if (mine.length === 0 && others.length === 0) return;
      const results = await Promise.allSettled([...mine, ...others]);
      for (let i = 0; i < mine.length; i++) {
        const r = results[i]!;
        if (r.status === 'rejected') throw r.reason;
      }
      // Copies we only waited for may have failed; their clusters are still
      // pending and the next round copies them itself.
      if (others.length === 0) return;
    }
  }

  private startCopy(first: number, end: number): Promise<void> {
    const copy = this.copyRun(first, end);
    for (let c = first; c < end; c++) this.inflight.set(c, copy);
    const forget = (): void => {
      for (let c = first; c < end; c++) if (this.inflight.get(c) === copy) this.inflight.delete(c);
    };
    copy.then(forget, forget);
    return copy;
  }

  private async copyRun(first: number, end: number): Promise<void> {
    const cs = this.copyClusterSize;
    const start = first * cs;
    const stop = Math.min(end * cs, this.length);
    const guard = await this.copyLock.acquire(start, stop, 'exclusive');
    const data = this.buffers.take(stop - start);
    try {
      try {
        await this.source.read(start, data);
      } catch (err) {
        throw this.copyFailed('read', this.source, start, stop, err);
      }
      try {
        // Always data, never an unmapping zero write: the cluster must end up
        // allocated in the target so that it shadows the source.
        await this.target.write(start, data);
      } catch (err) {
        throw this.copyFailed('write', this.target, start, stop, err);
      }
      this.pending.clearRange(first, end);
      this.stats.copies++;
      this.stats.copiedBytes += stop - start;
      this.stats.copiedBytesSinceRearm += stop - start;
    } finally {
      this.buffers.give(data);
      guard.release();
    }
  }

  private copyFailed(stage: 'read' | 'write', node: BlockNode, start: number, stop: number, err: unknown): BlockError {
    const cause = BlockError.from(err, `${stage} of ${node.nodeName}`);
    const failure: CopyFailure = { stage, node: node.nodeName, code: cause.code, message: cause.message };
    this.stats.copyErrors++;
    this.stats.lastError = failure;
    this.onFailure?.({ operation: stage === 'read' ? 'copy-read' : 'copy-write', node, error: cause });
    return new BlockError(
      cause.code,
      `copy-before-write of [${start}, ${stop}) failed to ${stage} ${node.nodeName}: ${cause.message}`,
      { cause },
    );
  }
}
