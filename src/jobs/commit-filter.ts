/**
 * The filter an active commit puts above the disk it commits (QEMU's
 * `mirror_top`). Requests pass through unchanged; every completed write,
 * write-zeroes or discard is reported so the job copies that range again.
 * Reporting after completion is what makes a concurrent copy safe: the job
 * clears a range before reading it, so either its read sees the new data or
 * the range is dirty again and copied once more.
 */
import { BlockNode, type BlockStatus } from '../block/node.js';

export type DirtyListener = (offset: number, length: number) => void;

export class CommitTopNode extends BlockNode {
  readonly driver = 'mirror_top';
  override readonly isFilter = true;
  private retiredTo: BlockNode | null = null;
  private readonly length: number;

  constructor(private readonly top: BlockNode, private readonly onDirty: DirtyListener) {
    super(undefined, false);
    this.length = top.size;
    this.setChild('file', top);
  }

  override get size(): number {
    return this.retiredTo ? this.retiredTo.size : this.length;
  }

  override get filename(): string {
    return this.top.filename;
  }

  /** Out of the graph: requests still parked at our gate go to `to`, unobserved. */
  retire(to: BlockNode): void {
    this.retiredTo = to;
    this.setChild('file', null);
  }

  protected doRead(offset: number, buf: Buffer): Promise<void> {
    return (this.retiredTo ?? this.top).read(offset, buf);
  }

  protected doWrite(offset: number, buf: Buffer, flags: number): Promise<void> {
    if (this.retiredTo) return this.retiredTo.write(offset, buf, flags);
    return this.top.write(offset, buf, flags).then(() => this.onDirty(offset, buf.length));
  }

  protected override doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    if (this.retiredTo) return this.retiredTo.writeZeroes(offset, length, flags);
    return this.top.writeZeroes(offset, length, flags).then(() => this.onDirty(offset, length));
  }

  protected override doDiscard(offset: number, length: number): Promise<void> {
    if (this.retiredTo) return this.retiredTo.discard(offset, length);
    return this.top.discard(offset, length).then(() => this.onDirty(offset, length));
  }

  protected doFlush(): Promise<void> {
    return (this.retiredTo ?? this.top).flush();
  }

  protected override doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    return (this.retiredTo ?? this.top).blockStatus(offset, length);
  }
}
