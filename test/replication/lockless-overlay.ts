/**
 * A test overlay with no internal locking: a read of an unallocated cluster
 * looks the cluster up, yields, then reads the backing, so nothing inside the
 * overlay closes the window between "not here" and "read below". Used as the
 * hidden disk in race tests, so they prove the replication node's own lock
 * rather than a side effect of the memory driver's range locks. (A qcow2
 * driver gives no such guarantee either.)
 */
import type { DriverDefinition, OpenContext } from '../../src/block/graph.js';
import { BlockNode, Status, type BlockStatus } from '../../src/block/node.js';

const CLUSTER = 64 * 1024;

export class LocklessOverlay extends BlockNode {
  readonly driver = 'lockless-overlay';
  readonly clusterSize = CLUSTER;
  private readonly clusters = new Map<number, Buffer>();

  constructor(name: string | undefined, private readonly length: number, backing: BlockNode) {
    super(name, false);
    this.setChild('backing', backing);
  }

  override get size(): number {
    return this.length;
  }

  protected async doRead(offset: number, buf: Buffer): Promise<void> {
    for (let done = 0; done < buf.length;) {
      const pos = offset + done;
      const idx = Math.floor(pos / CLUSTER);
      const within = pos - idx * CLUSTER;
      const n = Math.min(CLUSTER - within, buf.length - done);
      const data = this.clusters.get(idx);
      if (data) {
        data.copy(buf, done, within, within + n);
      } else {
        // The lookup said "not here"; give everyone else a turn before going below.
        await new Promise<void>((resolve) => setImmediate(resolve));
        await this.backing!.read(pos, buf.subarray(done, done + n));
      }
      done += n;
    }
  }

  protected async doWrite(offset: number, buf: Buffer): Promise<void> {
    for (let done = 0; done < buf.length;) {
      const pos = offset + done;
      const idx = Math.floor(pos / CLUSTER);
      const within = pos - idx * CLUSTER;
      const n = Math.min(CLUSTER - within, buf.length - done);
      let data = this.clusters.get(idx);
      if (!data) {
        data = Buffer.alloc(CLUSTER);
        if (n !== CLUSTER) await this.backing!.read(idx * CLUSTER, data.subarray(0, Math.min(CLUSTER, this.length - idx * CLUSTER)));
        this.clusters.set(idx, data);
      }
      buf.copy(data, within, done, done + n);
      done += n;
    }
  }

  protected async doFlush(): Promise<void> {}

  protected override async doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    const idx = Math.floor(offset / CLUSTER);
    const allocated = this.clusters.has(idx);
    let end = (idx + 1) * CLUSTER;
    while (end < offset + length && this.clusters.has(end / CLUSTER) === allocated) end += CLUSTER;
    return { length: Math.min(end, offset + length) - offset, flags: allocated ? Status.DATA | Status.ALLOCATED : 0, offset: -1 };
  }

  protected override async doMakeEmpty(): Promise<void> {
    this.clusters.clear();
  }
}

export const locklessOverlayDriver: DriverDefinition = {
  name: 'lockless-overlay',
  kind: 'format',
  async open(ctx: OpenContext): Promise<BlockNode> {
    const backing = await ctx.openChild('backing');
    if (!backing) throw new Error('lockless-overlay needs a backing');
    return new LocklessOverlay(ctx.nodeName, backing.size, backing);
  },
};
