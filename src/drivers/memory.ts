/**
 * `memory`: a disk held in RAM, cluster by cluster. With a `backing` it is an
 * overlay (unallocated clusters read through, partial writes copy the rest of
 * the cluster up, discard and write-zeroes leave zero clusters that hide the
 * backing) and it can be emptied, so it can serve as an active or hidden disk
 * when the buffers should never touch a file.
 */
import { BlockError } from '../block/errors.js';
import type { DriverDefinition, OpenContext } from '../block/graph.js';
import { BlockNode, Status, type BlockStatus } from '../block/node.js';
import { RangeLock } from '../block/range-lock.js';

const ZERO = null;
type Cluster = Buffer | typeof ZERO;

export class MemoryNode extends BlockNode {
  readonly driver = 'memory';
  /** Allocated clusters: data, or null for a zero cluster. Absent = unallocated. */
  private readonly clusters = new Map<number, Cluster>();
  private readonly locks = new RangeLock();

  constructor(nodeName: string | undefined, readOnly: boolean, private readonly length: number, readonly clusterSize: number, backing: BlockNode | null) {
    super(nodeName, readOnly);
    if (!Number.isInteger(Math.log2(clusterSize)) || clusterSize < 512 || clusterSize > 2 * 1024 * 1024) {
      throw new BlockError('EINVAL', 'cluster-size must be a power of two between 512 and 2097152');
    }
    if (backing) this.setChild('backing', backing);
  }

  override get size(): number {
    return this.length;
  }

  override get filename(): string {
    return `memory:${this.nodeName}`;
  }

  /** Bytes held by allocated data clusters. */
  get allocatedBytes(): number {
    let n = 0;
    for (const c of this.clusters.values()) if (c) n += this.clusterSize;
    return n;
  }

  protected async doRead(offset: number, buf: Buffer): Promise<void> {
    const guard = await this.locks.acquire(this.first(offset), this.last(offset, buf.length), 'shared');
    try {
      await this.readUnlocked(offset, buf);
    } finally {
      guard.release();
    }
  }

  protected async doWrite(offset: number, buf: Buffer, _flags: number): Promise<void> {
    const guard = await this.locks.acquire(this.first(offset), this.last(offset, buf.length), 'exclusive');
    try {
      let done = 0;
      while (done < buf.length) {
        const pos = offset + done;
        const idx = Math.floor(pos / this.clusterSize);
        const inCluster = pos - idx * this.clusterSize;
        const n = Math.min(this.clusterSize - inCluster, buf.length - done);
        const data = await this.clusterForWrite(idx, n === this.clusterSize);
        buf.copy(data, inCluster, done, done + n);
        done += n;
      }
    } finally {
      guard.release();
    }
  }

  protected override async doWriteZeroes(offset: number, length: number, _flags: number): Promise<void> {
    const guard = await this.locks.acquire(this.first(offset), this.last(offset, length), 'exclusive');
    try {
      let done = 0;
      while (done < length) {
        const pos = offset + done;
        const idx = Math.floor(pos / this.clusterSize);
        const inCluster = pos - idx * this.clusterSize;
        const n = Math.min(this.clusterSize - inCluster, length - done);
        if (n === this.clusterSize || this.isTailCluster(idx, inCluster, n)) {
          this.clusters.set(idx, ZERO);
        } else {
          const data = await this.clusterForWrite(idx, false);
          data.fill(0, inCluster, inCluster + n);
        }
        done += n;
      }
    } finally {
      guard.release();
    }
  }

  /** Whole clusters become zero clusters so that backing data cannot show through. */
  protected override async doDiscard(offset: number, length: number): Promise<void> {
    const guard = await this.locks.acquire(this.first(offset), this.last(offset, length), 'exclusive');
    try {
      const startIdx = Math.ceil(offset / this.clusterSize);
      const end = offset + length;
      const endIdx = end === this.length ? Math.ceil(end / this.clusterSize) : Math.floor(end / this.clusterSize);
      for (let i = startIdx; i < endIdx; i++) {
        if (this.backing) this.clusters.set(i, ZERO);
        else this.clusters.delete(i);
      }
    } finally {
      guard.release();
    }
  }

  protected async doFlush(): Promise<void> {}

  protected override async doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    const first = Math.floor(offset / this.clusterSize);
    const kind = (i: number): number => {
      if (!this.clusters.has(i)) return 0;
      return this.clusters.get(i) ? Status.DATA | Status.ALLOCATED : Status.ZERO | Status.ALLOCATED;
    };
    const flags = kind(first);
    let end = (first + 1) * this.clusterSize;
    const limit = offset + length;
    while (end < limit && kind(end / this.clusterSize) === flags) end += this.clusterSize;
    return { length: Math.min(end, limit) - offset, flags, offset: -1 };
  }

  protected override async doMakeEmpty(): Promise<void> {
    await this.quiesce();
    try {
      this.clusters.clear();
    } finally {
      this.resume();
    }
  }

  // ------------------------------------------------------------- internals

  private first(offset: number): number {
    return Math.floor(offset / this.clusterSize);
  }

  private last(offset: number, length: number): number {
    return Math.floor((offset + Math.max(length, 1) - 1) / this.clusterSize) + 1;
  }

  private isTailCluster(idx: number, inCluster: number, n: number): boolean {
    return inCluster === 0 && idx * this.clusterSize + n === this.length;
  }

  /** The writable buffer of cluster `idx`, copying up what reads see there when it is new. */
  private async clusterForWrite(idx: number, overwriteAll: boolean): Promise<Buffer> {
    const existing = this.clusters.get(idx);
    if (existing) return existing;
    const data = Buffer.alloc(this.clusterSize);
    if (existing === undefined && !overwriteAll) {
      const start = idx * this.clusterSize;
      const n = Math.min(this.clusterSize, this.length - start);
      await this.readBacking(start, data.subarray(0, n));
    }
    this.clusters.set(idx, data);
    return data;
  }

  private async readUnlocked(offset: number, buf: Buffer): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const idx = Math.floor(pos / this.clusterSize);
      const inCluster = pos - idx * this.clusterSize;
      let n = Math.min(this.clusterSize - inCluster, buf.length - done);
      const c = this.clusters.get(idx);
      if (c) {
        c.copy(buf, done, inCluster, inCluster + n);
      } else if (c === ZERO) {
        buf.fill(0, done, done + n);
      } else {
        // Coalesce a run of unallocated clusters into one backing read.
        let next = idx + 1;
        while (done + n < buf.length && !this.clusters.has(next)) {
          n = Math.min(n + this.clusterSize, buf.length - done);
          next++;
        }
        await this.readBacking(pos, buf.subarray(done, done + n));
      }
      done += n;
    }
  }

  private async readBacking(offset: number, dest: Buffer): Promise<void> {
    const backing = this.backing;
    if (!backing || offset >= backing.size) {
      dest.fill(0);
      return;
    }
    const n = Math.min(dest.length, backing.size - offset);
    await backing.read(offset, dest.subarray(0, n));
    if (n < dest.length) dest.fill(0, n);
  }
}

export const memoryDriver: DriverDefinition = {
  name: 'memory',
  kind: 'format',
  async open(ctx: OpenContext): Promise<BlockNode> {
    const backing = (await ctx.openChild('backing')) ?? null;
    const size = ctx.options.optInt('size') ?? backing?.size;
    if (size === undefined) throw new BlockError('EINVAL', "Parameter 'size' is missing");
    const clusterSize = ctx.options.optInt('cluster-size') ?? 65536;
    return new MemoryNode(ctx.nodeName, ctx.readOnly, size, clusterSize, backing);
  },
};

