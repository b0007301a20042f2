/**
 * `raw`: the format that adds nothing, optionally a window (`offset`, `size`)
 * into its `file`. Unlike `file` it does not grow: its size is fixed at open.
 */
import { BlockError } from '../block/errors.js';
import type { DriverDefinition, OpenContext } from '../block/graph.js';
import { BlockNode, Status, type BlockStatus } from '../block/node.js';

export class RawNode extends BlockNode {
  readonly driver = 'raw';

  constructor(nodeName: string | undefined, readOnly: boolean, file: BlockNode, private readonly base: number, private readonly length: number) {
    super(nodeName, readOnly);
    this.setChild('file', file);
  }

  override get size(): number {
    return this.length;
  }

  private get child(): BlockNode {
    return this.file!;
  }

  protected doRead(offset: number, buf: Buffer): Promise<void> {
    return this.child.read(this.base + offset, buf);
  }

  protected doWrite(offset: number, buf: Buffer, flags: number, released?: () => void): Promise<void> {
    return this.child.write(this.base + offset, buf, flags, released);
  }

  protected override doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    return this.child.writeZeroes(this.base + offset, length, flags);
  }

  protected override doDiscard(offset: number, length: number): Promise<void> {
    return this.child.discard(this.base + offset, length);
  }

  protected doFlush(): Promise<void> {
    return this.child.flush();
  }

  protected override async doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    const childSize = this.child.size;
    const at = this.base + offset;
    if (at >= childSize) return { length, flags: Status.ZERO | Status.ALLOCATED, offset: -1 };
    const st = await this.child.blockStatus(at, Math.min(length, childSize - at));
    return {
      length: st.length,
      flags: (st.flags & (Status.DATA | Status.ZERO)) | Status.ALLOCATED | Status.OFFSET_VALID,
      offset: at,
    };
  }
}

export const rawDriver: DriverDefinition = {
  name: 'raw',
  kind: 'format',
  async open(ctx: OpenContext): Promise<BlockNode> {
    const file = await ctx.openChild('file');
    if (!file) throw new BlockError('EINVAL', 'A block device must be specified for "file"');
    const base = ctx.options.optInt('offset') ?? 0;
    const explicit = ctx.options.optInt('size');
    if (base > file.size) throw new BlockError('EINVAL', `The sum of offset (${base}) and size (0) has to be smaller or equal to the  actual size of the containing file (${file.size})`);
    const length = explicit ?? file.size - base;
    if (base + length > file.size) {
      throw new BlockError('EINVAL', `The sum of offset (${base}) and size (${length}) has to be smaller or equal to the  actual size of the containing file (${file.size})`);
    }
    return new RawNode(ctx.nodeName, ctx.readOnly, file, base, length);
  },
};
