/**
 * The qcow2 block node: range locks on guest clusters around each request
 * (shared for reads, exclusive for writes, zeroes and discards), then the
 * request paths in read.ts, write.ts, zero.ts and status.ts.
 */
import { BlockNode, Req, type BlockStatus, type NodeInfo } from '../../block/node.js';
import { RangeLock, type RangeLockGuard } from '../../block/range-lock.js';
import { CompressedReader } from './compressed.js';
import type { Qcow2Io, Qcow2RuntimeOptions } from './context.js';
import { Compat, Incompat } from './format.js';
import { makeEmptyLocked } from './make-empty.js';
import { Mutex } from './mutex.js';
import { directReadHost, readRange } from './read.js';
import type { Qcow2State } from './state.js';
import { blockStatusOf } from './status.js';
import { inPlaceHost, writeLocked } from './write.js';
import { discardLocked, writeZeroesLocked } from './zero.js';

export class Qcow2Node extends BlockNode implements Qcow2Io {
  readonly driver = 'qcow2';
  readonly locks = new RangeLock();
  private readonly emptying = new Mutex();
  readonly compressed: CompressedReader;

  constructor(
    nodeName: string | undefined,
    readOnly: boolean,
    file: BlockNode,
    readonly state: Qcow2State,
    backing: BlockNode | null,
    readonly runtime: Qcow2RuntimeOptions,
    private readonly releaseWriter: () => void = () => undefined,
  ) {
    super(nodeName, readOnly);
    this.setChild('file', file);
    if (backing) this.setChild('backing', backing);
    this.compressed = new CompressedReader(state);
  }

  override get size(): number {
    return this.state.virtualSize;
  }

  get clusterSize(): number {
    return this.state.clusterSize;
  }

  private lockRange(offset: number, length: number, mode: 'shared' | 'exclusive'): RangeLockGuard | Promise<RangeLockGuard> {
    const cs = this.state.clusterSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / cs) + 1;
    return this.locks.tryAcquire(first, last, mode) ?? this.locks.acquire(first, last, mode);
  }

  protected doRead(offset: number, buf: Buffer): Promise<void> {
    const st = this.state;
    const cs = st.clusterSize;
    const c = Math.floor(offset / cs);
    // Fast path: a read inside one allocated cluster whose table is cached.
    if (Math.floor((offset + buf.length - 1) / cs) === c) {
      const guard = this.locks.tryAcquire(c, c + 1, 'shared');
      if (guard) {
        let host: number;
        try {
          host = directReadHost(this, c);
        } catch (err) {
          guard.release();
          return Promise.reject(err);
        }
        if (host >= 0) {
          return new Promise((resolve, reject) => {
            st.file.readCallback(host + (offset - c * cs), buf, (err) => {
              guard.release();
              if (err) reject(err);
              else resolve();
            });
          });
        }
        return this.readSlow(offset, buf, guard);
      }
    }
    return this.readSlow(offset, buf, null);
  }

  private async readSlow(offset: number, buf: Buffer, held: RangeLockGuard | null): Promise<void> {
    const got = held ?? this.lockRange(offset, buf.length, 'shared');
    const guard = got instanceof Promise ? await got : got;
    try {
      await readRange(this, offset, buf);
    } finally {
      guard.release();
    }
  }

  protected doWrite(offset: number, buf: Buffer, flags: number): Promise<void> {
    const st = this.state;
    const cs = st.clusterSize;
    const c = Math.floor(offset / cs);
    // Fast path: a write inside one allocated cluster whose table is cached
    // needs no metadata and no await before the data write.
    if (!st.broken && !(flags & Req.FUA) && Math.floor((offset + buf.length - 1) / cs) === c) {
      const guard = this.locks.tryAcquire(c, c + 1, 'exclusive');
      if (guard) {
        let host: number;
        try {
          host = inPlaceHost(this, c);
        } catch (err) {
          guard.release();
          return Promise.reject(err);
        }
        if (host >= 0) {
          return new Promise((resolve, reject) => {
            st.file.writeCallback(host + (offset - c * cs), buf, (err) => {
              guard.release();
              if (err) {
                reject(err);
              } else {
                st.unsyncedWrites = true;
                resolve();
              }
            });
          });
        }
        return this.writeSlow(offset, buf, flags, guard);
      }
    }
    return this.writeSlow(offset, buf, flags, null);
  }

  private async writeSlow(offset: number, buf: Buffer, flags: number, held: RangeLockGuard | null): Promise<void> {
    if (this.state.broken) {
      held?.release();
      this.state.checkWritable();
    }
    const got = held ?? this.lockRange(offset, buf.length, 'exclusive');
    const guard = got instanceof Promise ? await got : got;
    try {
      await writeLocked(this, offset, buf);
    } finally {
      guard.release();
    }
    if (flags & Req.FUA) await this.state.flush();
  }

  protected override async doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    this.state.checkWritable();
    const got = this.lockRange(offset, length, 'exclusive');
    const guard = got instanceof Promise ? await got : got;
    try {
      await writeZeroesLocked(this, offset, length, flags);
    } finally {
      guard.release();
    }
    if (flags & Req.FUA) await this.state.flush();
  }

  protected override async doDiscard(offset: number, length: number): Promise<void> {
    this.state.checkWritable();
    const got = this.lockRange(offset, length, 'exclusive');
    const guard = got instanceof Promise ? await got : got;
    try {
      await discardLocked(this, offset, length);
    } finally {
      guard.release();
    }
  }

  protected doFlush(): Promise<void> {
    return this.state.flush();
  }

  protected override doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    return blockStatusOf(this, offset, length);
  }

  protected override doMakeEmpty(): Promise<void> {
    // make-empty is not a tracked request, so quiescing alone would let two
    // of them overlap: they take turns. The uncontended case quiesces
    // synchronously, so requests issued after the call wait for it.
    if (this.emptying.tryLock()) return this.emptyHoldingLock();
    return this.emptying.lock().then(() => this.emptyHoldingLock());
  }

  private async emptyHoldingLock(): Promise<void> {
    try {
      await this.quiesce();
      try {
        await makeEmptyLocked(this);
      } finally {
        this.resume();
      }
    } finally {
      this.emptying.unlock();
    }
  }

  /** QEMU's ImageInfo additions for qcow2 (query-named-block-nodes, query-block). */
  override info(): NodeInfo {
    const info = super.info();
    const h = this.state.header;
    const data: Record<string, unknown> = {
      compat: h.version === 3 ? '1.1' : '0.10',
      'refcount-bits': 1 << h.refcountOrder,
    };
    if (h.version === 3) {
      Object.assign(data, {
        'compression-type': 'zlib',
        'lazy-refcounts': (h.compatible & BigInt(Compat.LAZY_REFCOUNTS)) !== 0n,
        corrupt: this.state.broken || (h.incompatible & BigInt(Incompat.CORRUPT)) !== 0n,
        'extended-l2': false,
      });
    }
    Object.assign(info.image, {
      'cluster-size': this.state.clusterSize,
      'dirty-flag': (h.incompatible & BigInt(Incompat.DIRTY)) !== 0n,
      'format-specific': { type: 'qcow2', data },
    });
    if (h.backingFile !== undefined) Object.assign(info.image, { 'full-backing-filename': info.image['backing-filename'] ?? h.backingFile });
    if (h.backingFormat !== undefined) Object.assign(info.image, { 'backing-filename-format': h.backingFormat });
    return info;
  }

  protected override async doClose(): Promise<void> {
    try {
      await this.state.close();
    } finally {
      this.releaseWriter();
    }
  }
}
