/**
 * The backup job in sync=none mode, the way replication uses it: it copies
 * nothing by itself. Starting it puts a copy-before-write filter above the
 * source (every parent of the source now goes through the filter, except the
 * ones the caller keeps on the source); cancelling it takes the filter out.
 * `checkpoint` re-arms the filter for the whole disk (QEMU's
 * backup_do_checkpoint).
 */
import { BlockError } from '../block/errors.js';
import type { BlockGraph } from '../block/graph.js';
import type { BlockNode, ChildOwner } from '../block/node.js';
import { CopyBeforeWriteNode, type CbwFailureListener } from './cbw.js';
import { copyClusterSizeFor } from './cluster-size.js';
import { Job, type RunResult } from './job.js';
import { jobRegistry } from './registry.js';

export interface BackupJobOptions {
  /** Defaults to a unique `backup-<source>`. */
  id?: string;
  source: BlockNode;
  target: BlockNode;
  internal?: boolean;
  /** Parents that keep pointing at the source itself rather than at the filter. */
  keepOnSource?: Iterable<ChildOwner>;
  /** Told about every failed copy or pass-down (the failing request still gets its error). */
  onFailure?: CbwFailureListener;
}

export class BackupJob extends Job {
  readonly source: BlockNode;
  readonly target: BlockNode;
  private filter: CopyBeforeWriteNode | null = null;
  private readonly keep: ChildOwner[];
  private readonly onFailure: CbwFailureListener | null;

  constructor(graph: BlockGraph, options: BackupJobOptions) {
    const id = options.id ?? jobRegistry(graph).uniqueId(`backup-${options.source.nodeName}`);
    super(graph, id, 'backup', options.internal ?? false, options.source.nodeName);
    this.source = options.source;
    this.target = options.target;
    this.keep = [...(options.keepOnSource ?? [])];
    this.onFailure = options.onFailure ?? null;
  }

  /** The filter while the job runs; null before start and after it ends. */
  get cbw(): CopyBeforeWriteNode | null {
    return this.filter;
  }

  /** Re-arms copy-before-write for the whole disk. The caller quiesces the filter. */
  checkpoint(): void {
    if (!this.filter) throw new BlockError('EINVAL', 'Backup job was cancelled unexpectedly');
    this.filter.rearm();
  }

  protected async prepare(): Promise<void> {
    if (this.source === this.target) throw new BlockError('EINVAL', 'Source and target cannot be the same');
    if (this.source.size !== this.target.size) {
      throw new BlockError('EINVAL', 'Source and target image have different sizes');
    }
    const filter = new CopyBeforeWriteNode(this.source, this.target, copyClusterSizeFor(this.target), this.onFailure);
    await this.source.quiesce();
    try {
      this.graph.replaceNode(this.source, filter, new Set<ChildOwner>([filter, ...this.keep]));
    } finally {
      this.source.resume();
    }
    this.filter = filter;
  }

  protected async run(): Promise<RunResult> {
    await this.cancellation();
    const filter = this.filter!;
    await filter.quiesce();
    try {
      this.graph.replaceNode(filter, this.source);
      filter.retire(this.source);
    } finally {
      filter.resume();
    }
    this.filter = null;
    return 'cancelled';
  }
}
