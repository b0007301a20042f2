/**
 * A file node held in memory for tests: it logs every write and sync (for
 * power-loss images) and can be told to fail writes or syncs (for I/O error
 * paths).
 */
import { BlockError } from '../../src/block/errors.js';
import type { DriverDefinition, OpenContext } from '../../src/block/graph.js';
import { BlockNode } from '../../src/block/node.js';

export type LogEntry =
  | { kind: 'write'; offset: number; data: Buffer }
  | { kind: 'sync' }
  | { kind: 'ack'; batch: number }
  | { kind: 'fua'; batch: number; index: number };

export class MemoryFile extends BlockNode {
  readonly driver = 'memory-file';
  private data: Buffer;
  private length: number;
  failWrites = false;
  /** When >= 0: the number of writes that still succeed before writes start failing. */
  failWritesAfter = -1;
  failSyncs = false;

  constructor(initial: Buffer, readonly log: LogEntry[] = []) {
    super(undefined, false);
    this.data = Buffer.alloc(Math.max(initial.length * 2, 1 << 20));
    initial.copy(this.data);
    this.length = initial.length;
  }

  override get size(): number {
    return this.length;
  }

  override get growable(): boolean {
    return true;
  }

  override get filename(): string {
    return 'memory-file';
  }

  /** The file's current bytes. */
  contents(): Buffer {
    return Buffer.from(this.data.subarray(0, this.length));
  }

  protected async doRead(offset: number, buf: Buffer): Promise<void> {
    buf.fill(0);
    if (offset < this.length) this.data.copy(buf, 0, offset, Math.min(this.length, offset + buf.length));
  }

  protected async doWrite(offset: number, buf: Buffer): Promise<void> {
    if (this.failWritesAfter === 0) this.failWrites = true;
    if (this.failWritesAfter > 0) this.failWritesAfter--;
    if (this.failWrites) throw new BlockError('EIO', 'injected write error');
    const end = offset + buf.length;
    if (end > this.data.length) {
      const next = Buffer.alloc(Math.max(end, this.data.length * 2));
      this.data.copy(next);
      this.data = next;
    }
    buf.copy(this.data, offset);
    if (end > this.length) this.length = end;
    this.log.push({ kind: 'write', offset, data: Buffer.from(buf) });
  }

  protected async doFlush(): Promise<void> {
    if (this.failSyncs) throw new BlockError('EIO', 'injected sync error');
    this.log.push({ kind: 'sync' });
  }
}

/** A driver that hands out the given node, for `file: { driver: 'memory-file' }`. */
export function memoryFileDriver(node: MemoryFile): DriverDefinition {
  return { name: 'memory-file', kind: 'protocol', open: async (_ctx: OpenContext) => node };
}
