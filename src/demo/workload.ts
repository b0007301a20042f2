/**
 * The demo's guest: random writes with random data through an NBD export,
 * applied to a byte model of what that export must contain. Overlapping
 * writes in flight are ordered by a range lock so the model is exact.
 */
import { randomFillSync } from 'node:crypto';
import type { BlockBackend } from '../block/backend.js';
import { RangeLock } from '../block/range-lock.js';

export interface WriteStats {
  writes: number;
  bytes: number;
  failed: number;
}

export class ModelledDisk {
  private readonly lock = new RangeLock();
  readonly stats: WriteStats = { writes: 0, bytes: 0, failed: 0 };

  constructor(readonly blk: BlockBackend, public model: Buffer, private seed: number) {}

  /** Pseudo-random, reproducible from the seed. */
  private next(): number {
    let x = this.seed;
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    this.seed = x >>> 0;
    return this.seed;
  }

  /** One write of 4 KiB..maxLen at a 4 KiB-aligned offset, applied to the model when acknowledged. */
  async writeOnce(maxLen: number): Promise<void> {
    const size = this.model.length;
    const len = Math.min(size, 4096 * (1 + (this.next() % Math.max(1, maxLen / 4096))));
    const offset = 4096 * (this.next() % ((size - len) / 4096 + 1));
    const data = randomFillSync(Buffer.allocUnsafe(len));
    const guard = await this.lock.acquire(offset, offset + len);
    try {
      await this.blk.write(offset, data);
      data.copy(this.model, offset);
      this.stats.writes++;
      this.stats.bytes += len;
    } catch (err) {
      this.stats.failed++;
      throw err;
    } finally {
      guard.release();
    }
  }

  /** Writes with `concurrency` requests in flight until `until` resolves (or count is reached). */
  async run(options: { concurrency: number; maxLen: number; count?: number; until?: Promise<unknown>; tolerateErrors?: boolean }): Promise<void> {
    let stop = false;
    void options.until?.then(() => { stop = true; }, () => { stop = true; });
    let issued = 0;
    const worker = async (): Promise<void> => {
      while (!stop && (options.count === undefined || issued < options.count)) {
        issued++;
        try {
          await this.writeOnce(options.maxLen);
        } catch (err) {
          if (!options.tolerateErrors) throw err;
          return;
        }
      }
    };
    await Promise.all(Array.from({ length: options.concurrency }, worker));
  }

  /** The first offset where the export differs from the model, or -1. */
  async firstMismatch(chunk = 1 << 20): Promise<number> {
    const buf = Buffer.allocUnsafe(chunk);
    for (let off = 0; off < this.model.length; off += chunk) {
      const n = Math.min(chunk, this.model.length - off);
      const view = buf.subarray(0, n);
      await this.blk.read(off, view);
      const expected = this.model.subarray(off, off + n);
      if (!view.equals(expected)) {
        for (let i = 0; i < n; i++) if (view[i] !== expected[i]) return off + i;
      }
    }
    return -1;
  }
}
