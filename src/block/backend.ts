/**
 * A BlockBackend is how something outside the graph uses a node: an NBD
 * export, the io tool, a test. It checks requests against the node's size
 * (nodes themselves may grow) and follows the node when the graph swaps it
 * (a copy-before-write filter inserted above it, an active commit finishing).
 */
import { BlockError } from './errors.js';
import { BlockNode, ChildRef, type BlockBackendLike, type BlockStatus } from './node.js';

export class BlockBackend implements BlockBackendLike {
  readonly kind = 'backend' as const;
  private ref: ChildRef | null;

  constructor(readonly name: string, node: BlockNode) {
    this.ref = new ChildRef(this, 'root', node);
  }

  get node(): BlockNode {
    if (!this.ref) throw new BlockError('ENOMEDIUM', `${this.name} has no node attached`);
    return this.ref.node;
  }

  get attached(): boolean {
    return this.ref !== null;
  }

  get size(): number {
    return this.node.size;
  }

  /** @internal */
  onDetach(ref: ChildRef): void {
    if (this.ref === ref) this.ref = null;
  }

  /** Lets go of the node. */
  detach(): void {
    this.ref?.detach();
    this.ref = null;
  }

  read(offset: number, buf: Buffer): Promise<void> {
    const bad = this.check(offset, buf.length);
    return bad ? Promise.reject(bad) : this.node.read(offset, buf);
  }

  write(offset: number, buf: Buffer, flags = 0): Promise<void> {
    const bad = this.check(offset, buf.length);
    return bad ? Promise.reject(bad) : this.node.write(offset, buf, flags);
  }

  writeZeroes(offset: number, length: number, flags = 0): Promise<void> {
    const bad = this.check(offset, length);
    return bad ? Promise.reject(bad) : this.node.writeZeroes(offset, length, flags);
  }

  discard(offset: number, length: number): Promise<void> {
    const bad = this.check(offset, length);
    return bad ? Promise.reject(bad) : this.node.discard(offset, length);
  }

  flush(): Promise<void> {
    return this.node.flush();
  }

  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    const bad = this.check(offset, length);
    return bad ? Promise.reject(bad) : this.node.blockStatus(offset, length);
  }

  private check(offset: number, length: number): BlockError | null {
    if (!this.ref) return new BlockError('ENOMEDIUM', `${this.name} has no node attached`);
    const size = this.ref.node.size;
    if (offset < 0 || length < 0 || offset + length > size) {
      return new BlockError('EIO', `request [${offset}, ${offset + length}) is beyond the end of ${this.name} (${size} bytes)`);
    }
    return null;
  }
}
