/**
 * `quorum`: every write and flush goes to all children at once and succeeds
 * when at least `vote-threshold` of them do (otherwise the most common error
 * wins); reads either take the first child that answers without error
 * (`read-pattern=fifo`, what COLO uses) or read every child and return the
 * version a majority agrees on (`quorum`, QEMU's default). Children can be
 * added and removed at run time with QEMU's x-blockdev-change semantics.
 * Failing children raise QUORUM_REPORT_BAD, failed requests QUORUM_FAILURE,
 * on the graph's replication event stream.
 */
import { BlockError, strerror, type Errno } from '../block/errors.js';
import type { BlockGraph, DriverDefinition, OpenContext } from '../block/graph.js';
import { BlockNode, ChildRef, Status, type BlockStatus } from '../block/node.js';
import { blockStatusAbove } from '../block/chain.js';
import { replicationRegistry } from '../replication/registry.js';
import type { QuorumReportBad } from '../replication/events.js';
import type { ChildManager } from '../control/child-manager.js';
import { rootLogger } from '../util/log.js';

export type ReadPattern = 'quorum' | 'fifo';

/** x-blockdev-change reaches `addChild` / `removeChild` through the control layer's ChildManager. */
export class QuorumNode extends BlockNode implements ChildManager {
  readonly driver = 'quorum';
  private kids: ChildRef[] = [];
  private nextChildIndex: number;
  private readonly log = rootLogger.child({ component: 'quorum' });

  constructor(
    private readonly graph: BlockGraph,
    nodeName: string | undefined,
    readOnly: boolean,
    children: readonly BlockNode[],
    readonly threshold: number,
    readonly readPattern: ReadPattern,
    readonly rewriteCorrupted: boolean,
  ) {
    super(nodeName, readOnly);
    children.forEach((child, i) => this.attach(`children.${i}`, child));
    this.nextChildIndex = children.length;
  }

  override get size(): number {
    return this.kids[0]?.node.size ?? 0;
  }

  /** Child names in order (`children.N`). */
  get childNames(): string[] {
    return this.kids.map((k) => k.role);
  }

  get childNodes(): BlockNode[] {
    return this.kids.map((k) => k.node);
  }

  // ------------------------------------------------- x-blockdev-change

  addChild(node: BlockNode): void {
    if (node.parents.size > 0) throw new BlockError('EBUSY', `The node ${node.nodeName} already has a parent`);
    // QEMU lets a child of another size in and then fails every length query; refuse it up front.
    if (node.size !== this.size) {
      throw new BlockError('EINVAL', `The node ${node.nodeName} has ${node.size} bytes but the children of ${this.nodeName} have ${this.size}`);
    }
    const name = `children.${this.nextChildIndex}`;
    this.nextChildIndex++;
    this.attach(name, node);
  }

  removeChild(childName: string): void {
    const ref = this.kids.find((k) => k.role === childName);
    if (!ref) throw new BlockError('ENOENT', `Node '${this.nodeName}' does not have child '${childName}'`);
    if (this.kids.length <= this.threshold) {
      throw new BlockError('EINVAL', `The number of children cannot be lower than the vote threshold ${this.threshold}`);
    }
    // The counter only steps back when the newest name goes, so names are never reused while in use.
    if (childName === `children.${this.nextChildIndex - 1}`) this.nextChildIndex--;
    this.kids = this.kids.filter((k) => k !== ref);
    const child = ref.node;
    ref.detach();
    if (child.parents.size === 0 && !this.graph.isMonitorOwned(child) && !child.isClosed) {
      // An inline child dies with its last reference, as bdrv_unref_child does.
      this.graph.closeTree(child).catch((err: unknown) => this.log.warn('quorum-child-close-failed', { child: child.nodeName, error: err }));
    }
  }

  // ----------------------------------------------------------------- I/O

  protected async doRead(offset: number, buf: Buffer): Promise<void> {
    const kids = this.childNodes;
    if (this.readPattern === 'fifo') {
      let last: unknown = null;
      for (const child of kids) {
        try {
          await child.read(offset, buf);
          return;
        } catch (err) {
          last = err;
          this.reportBad('read', child, offset, buf.length, err);
        }
      }
      throw last;
    }
    await this.voteRead(kids, offset, buf);
  }

  protected doWrite(offset: number, buf: Buffer, flags: number): Promise<void> {
    return this.toAll('write', offset, buf.length, (child) => child.write(offset, buf, flags));
  }

  protected override doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    return this.toAll('write', offset, length, (child) => child.writeZeroes(offset, length, flags));
  }

  // QEMU's quorum has no discard: the base class's silent success is its behaviour.

  protected async doFlush(): Promise<void> {
    const kids = this.childNodes;
    const results = await Promise.allSettled(kids.map((c) => c.flush()));
    const errors: unknown[] = [];
    results.forEach((r, i) => {
      if (r.status === 'rejected') {
        errors.push(r.reason);
        this.reportBad('flush', kids[i]!, 0, 0, r.reason);
      }
    });
    if (kids.length - errors.length >= this.threshold) return;
    throw mostCommonError(errors);
  }

  /** DATA unless every child reads zeroes there, as QEMU's quorum_co_block_status. */
  protected override async doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    let zeroLength = length;
    let dataLength = 0;
    for (const child of this.childNodes) {
      let st;
      try {
        st = await blockStatusAbove(child, null, offset, length);
      } catch (err) {
        this.reportBad('read', child, offset, length, err);
        dataLength = length;
        break;
      }
      if (st.flags & Status.ZERO) zeroLength = Math.min(zeroLength, st.length);
      else dataLength = Math.max(dataLength, st.length);
    }
    if (dataLength > 0) return { length: dataLength, flags: Status.DATA | Status.ALLOCATED, offset: -1 };
    return { length: zeroLength, flags: Status.ZERO | Status.ALLOCATED, offset: -1 };
  }

  // ------------------------------------------------------------ internals

  private attach(name: string, node: BlockNode): void {
    this.setChild(name, node);
    this.kids.push(this.children.get(name)!);
  }

  /**
   * Sends one write to every child and settles once all have answered.
   * Hand-rolled rather than Promise.allSettled: it is on every replicated
   * write, and allSettled costs a result object and a microtask per child.
   */
  private toAll(type: 'write', offset: number, length: number, op: (child: BlockNode) => Promise<void>): Promise<void> {
    const kids = this.kids;
    const count = kids.length;
    return new Promise<void>((resolve, reject) => {
      let pending = count;
      let failures: Array<{ child: BlockNode; index: number; err: unknown }> | null = null;
      const settle = (): void => {
        if (--pending > 0) return;
        if (failures === null) {
          resolve();
          return;
        }
        failures.sort((a, b) => a.index - b.index);
        for (const f of failures) this.reportBad(type, f.child, offset, length, f.err);
        if (count - failures.length >= this.threshold) {
          resolve();
          return;
        }
        this.reportFailure(offset, length);
        reject(mostCommonError(failures.map((f) => f.err)));
      };
      for (let index = 0; index < count; index++) {
        const child = kids[index]!.node;
        op(child).then(settle, (err: unknown) => {
          (failures ??= []).push({ child, index, err });
          settle();
        });
      }
    });
  }

  private async voteRead(kids: BlockNode[], offset: number, buf: Buffer): Promise<void> {
    // Child 0 reads straight into the caller's buffer; a winner from elsewhere is copied over it.
    const bufs = kids.map((_, i) => (i === 0 ? buf : Buffer.allocUnsafe(buf.length)));
    const results = await Promise.allSettled(kids.map((c, i) => c.read(offset, bufs[i]!)));
    const ok: number[] = [];
    const errors: unknown[] = [];
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') ok.push(i);
      else {
        errors.push(r.reason);
        this.reportBad('read', kids[i]!, offset, buf.length, r.reason);
      }
    });
    if (ok.length < this.threshold) {
      this.reportFailure(offset, buf.length);
      throw mostCommonError(errors);
    }
    // Group identical versions, in child order.
    const groups: number[][] = [];
    for (const i of ok) {
      const g = groups.find((members) => bufs[members[0]!]!.equals(bufs[i]!));
      if (g) g.push(i);
      else groups.push([i]);
    }
    let winner = groups[0]!;
    for (const g of groups) if (g.length > winner.length) winner = g;
    if (winner.length < this.threshold) {
      this.reportFailure(offset, buf.length);
      throw new BlockError('EIO', `quorum ${this.nodeName}: no version of [${offset}, ${offset + buf.length}) has ${this.threshold} votes`);
    }
    const best = bufs[winner[0]!]!;
    if (best !== buf) best.copy(buf);
    const losers = groups.filter((g) => g !== winner).flat();
    for (const i of losers) this.reportBad('read', kids[i]!, offset, buf.length, null);
    if (this.rewriteCorrupted && losers.length > 0) {
      // A repair attempt: its failure changes nothing for the reader.
      await Promise.allSettled(losers.map((i) => kids[i]!.write(offset, buf)));
    }
  }

  private reportBad(type: QuorumReportBad['type'], child: BlockNode, offset: number, length: number, err: unknown): void {
    const event: QuorumReportBad = {
      type,
      'node-name': child.nodeName,
      'sector-num': Math.floor(offset / 512),
      'sectors-count': Math.ceil((offset + length) / 512) - Math.floor(offset / 512),
    };
    if (err !== null) event.error = strerror(BlockError.from(err, type).code);
    this.log.debug('quorum-report-bad', { ...event });
    replicationRegistry(this.graph).events.emit('quorum-report-bad', event);
  }

  private reportFailure(offset: number, length: number): void {
    const sector = Math.floor(offset / 512);
    replicationRegistry(this.graph).events.emit('quorum-failure', {
      reference: this.backends[0]?.name ?? this.nodeName,
      'sector-num': sector,
      'sectors-count': Math.ceil((offset + length) / 512) - sector,
    });
  }
}

/** The error most children returned; ties go to the one seen first (lowest child index). */
function mostCommonError(errors: unknown[]): BlockError {
  const wrapped = errors.map((e) => BlockError.from(e, 'quorum child'));
  const counts = new Map<Errno, number>();
  for (const e of wrapped) counts.set(e.code, (counts.get(e.code) ?? 0) + 1);
  let best = wrapped[0]!;
  for (const e of wrapped) if (counts.get(e.code)! > counts.get(best.code)!) best = e;
  return best;
}

export const quorumDriver: DriverDefinition = {
  name: 'quorum',
  kind: 'format',
  async open(ctx: OpenContext): Promise<BlockNode> {
    const o = ctx.options;
    const children = o.take('children');
    if (children !== undefined && !Array.isArray(children)) throw new BlockError('EINVAL', 'Option children is not a valid array');
    const list = children ?? [];
    if (list.length < 1) throw new BlockError('EINVAL', 'Number of provided children must be 1 or more');
    const threshold = o.optInt('vote-threshold', Number.MIN_SAFE_INTEGER) ?? 0;
    if (threshold < 1) throw new BlockError('EINVAL', "Parameter 'vote-threshold' expects a value >= 1");
    if (threshold > list.length) throw new BlockError('EINVAL', 'threshold may not exceed children count');
    const pattern = o.optString('read-pattern') ?? 'quorum';
    if (pattern !== 'quorum' && pattern !== 'fifo') throw new BlockError('EINVAL', 'Please set read-pattern as fifo or quorum');
    const blkverify = o.optBool('blkverify') ?? false;
    let rewrite = o.optBool('rewrite-corrupted') ?? false;
    if (pattern === 'quorum') {
      if (blkverify && (list.length !== 2 || threshold !== 2)) {
        throw new BlockError('EINVAL', 'blkverify=on can only be set if there are exactly two files and vote-threshold is 2');
      }
      if (rewrite && blkverify) throw new BlockError('EINVAL', 'rewrite-corrupted=on cannot be used with blkverify=on');
      // QEMU's blkverify mode exits the process on a mismatch; colo-blk offers no such mode.
      if (blkverify) throw new BlockError('ENOTSUP', 'blkverify=on is not supported by colo-blk');
    } else {
      // QEMU reads both options only for read-pattern=quorum.
      rewrite = false;
    }
    const nodes: BlockNode[] = [];
    for (let i = 0; i < list.length; i++) nodes.push(await ctx.openChildValue(list[i]!, `children.${i}`));
    if (nodes.some((n) => n.size !== nodes[0]!.size)) {
      throw new BlockError('EIO', 'Could not refresh total sector count: Input/output error');
    }
    return new QuorumNode(ctx.graph, ctx.nodeName, ctx.readOnly, nodes, threshold, pattern, rewrite);
  },
};
