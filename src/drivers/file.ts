/**
 * `file`: a host file as raw bytes. I/O goes through libuv's thread pool on a
 * plain descriptor (the callback API costs less per request than FileHandle
 * promises). Like QEMU's protocol nodes it grows when written past its end,
 * which is what a format driver allocating clusters needs.
 */
import * as fs from 'node:fs';
import { BlockError, strerror } from '../block/errors.js';
import type { DriverDefinition, OpenContext } from '../block/graph.js';
import { BlockNode, Req, Status, type BlockStatus } from '../block/node.js';

const ZERO_CHUNK = Buffer.alloc(1 << 20);

/**
 * Reads and writes up to `INLINE_MAX` are done inline, on the event loop: a
 * page-cache copy of 4 KiB takes 1-3 us and of 1 MiB 50-300 us, while a
 * trip through libuv's thread pool adds about 10 us of cross-thread
 * wake-ups, and on a machine with few CPUs the pool's queue lock is taken
 * over by preempted workers (measured: 1 MiB copy-before-write throughput
 * +15% inline; docs/performance.md). A device that blocks (a cold read from
 * a disk, writeback throttling) must not stall the loop, so `SLOW_STREAK`
 * requests in a row that take longer than `SLOW_MS` send the node back to
 * the pool for `BACKOFF_MS`.
 */
const INLINE_MAX = 1 << 20;
const SLOW_MS = 0.5;
/** One slow request may be the loop being preempted (wall time); several in a row are the device. */
const SLOW_STREAK = 3;
const BACKOFF_MS = 2_000;

function preadOnce(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function pwriteOnce(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.write(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function pwritevOnce(fd: number, bufs: Buffer[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.writev(fd, bufs, pos, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

function ftruncate(fd: number, len: number): Promise<void> {
  return new Promise((resolve, reject) => fs.ftruncate(fd, len, (err) => (err ? reject(err) : resolve())));
}

export class FileNode extends BlockNode {
  readonly driver = 'file';
  private length: number;

  private constructor(nodeName: string | undefined, readOnly: boolean, private fd: number, readonly path: string, length: number) {
    super(nodeName, readOnly);
    this.length = length;
  }

  static async open(path: string, opts: { nodeName?: string; readOnly?: boolean } = {}): Promise<FileNode> {
    const readOnly = opts.readOnly ?? false;
    let fd: number;
    try {
      fd = await new Promise<number>((resolve, reject) =>
        fs.open(path, readOnly ? 'r' : 'r+', (err, f) => (err ? reject(err) : resolve(f))));
    } catch (err) {
      const code = BlockError.from(err, 'open').code;
      const text = (err as NodeJS.ErrnoException).code === 'EISDIR' ? 'Is a directory' : strerror(code);
      throw new BlockError(code, `Could not open '${path}': ${text}`, { cause: err });
    }
    const st = fs.fstatSync(fd);
    return new FileNode(opts.nodeName, readOnly, fd, path, st.size);
  }

  override get size(): number {
    return this.length;
  }

  override get filename(): string {
    return this.path;
  }

  /** Writes past the end extend the file. */
  override get growable(): boolean {
    return true;
  }

  /** Until then (a `performance.now()` time) small requests use the pool. */
  private inlineAfter = 0;
  private slowStreak = 0;

  /** Whether a request of `length` bytes runs inline now. */
  private inline(length: number): boolean {
    return length <= INLINE_MAX && (this.inlineAfter === 0 || this.checkBackoff());
  }

  private checkBackoff(): boolean {
    if (performance.now() < this.inlineAfter) return false;
    this.inlineAfter = 0;
    return true;
  }

  /**
   * Runs one inline system-call loop, turning its errors into BlockErrors
   * and timing it for the back-off.
   */
  private inlineIo<T>(op: 'read' | 'write', io: () => T): T {
    const start = performance.now();
    try {
      return io();
    } catch (err) {
      throw BlockError.from(err, `${op} on ${this.path} failed`);
    } finally {
      if (performance.now() - start <= SLOW_MS) {
        this.slowStreak = 0;
      } else if (++this.slowStreak >= SLOW_STREAK) {
        this.slowStreak = 0;
        this.inlineAfter = performance.now() + BACKOFF_MS;
      }
    }
  }

  /** One inline positional read, fully (zeroes past the end). */
  private readInline(buf: Buffer, position: number): void {
    this.inlineIo('read', () => {
      for (let done = 0; done < buf.length;) {
        const n = fs.readSync(this.fd, buf, done, buf.length - done, position + done);
        if (n === 0) {
          buf.fill(0, done);
          return;
        }
        done += n;
      }
    });
  }

  /** One inline positional write, fully. */
  private writeInline(buf: Buffer, position: number): void {
    this.inlineIo('write', () => {
      for (let done = 0; done < buf.length;) done += fs.writeSync(this.fd, buf, done, buf.length - done, position + done);
    });
    if (position + buf.length > this.length) this.length = position + buf.length;
  }

  /** Reads fully; bytes past the end of the file read as zeroes. */
  protected async doRead(offset: number, buf: Buffer): Promise<void> {
    if (this.inline(buf.length)) {
      this.readInline(buf, offset);
      return;
    }
    let done = 0;
    while (done < buf.length) {
      const n = await this.io(preadOnce(this.fd, buf, done, buf.length - done, offset + done), 'read');
      if (n === 0) {
        buf.fill(0, done);
        return;
      }
      done += n;
    }
  }

  protected async doWrite(offset: number, buf: Buffer, flags: number): Promise<void> {
    if (this.inline(buf.length)) {
      this.writeInline(buf, offset);
      if (flags & Req.FUA) await this.io(fdatasync(this.fd), 'flush');
      return;
    }
    let done = 0;
    while (done < buf.length) {
      done += await this.io(pwriteOnce(this.fd, buf, done, buf.length - done, offset + done), 'write');
    }
    if (offset + buf.length > this.length) this.length = offset + buf.length;
    if (flags & Req.FUA) await this.io(fdatasync(this.fd), 'flush');
  }

  /**
   * One positional write without this node's request accounting: for a
   * format driver on top that accounts for its own requests (qcow2's hot
   * path), where the extra promise layers cost more than the system call.
   */
  pwrite(buf: Buffer, position: number): Promise<void> {
    return new Promise((resolve, reject) => this.pwriteCallback(buf, position, (err) => (err ? reject(err) : resolve())));
  }

  /** `pwrite` with a completion callback, for callers that would only wrap the promise again. */
  pwriteCallback(buf: Buffer, position: number, done: (err: BlockError | null) => void): void {
    if (this.fd < 0) {
      done(new BlockError('ENOMEDIUM', `node ${this.nodeName} is closed`));
      return;
    }
    if (this.inline(buf.length)) {
      callBackLater(() => this.writeInline(buf, position), done);
      return;
    }
    fs.write(this.fd, buf, 0, buf.length, position, (err, n) => {
      if (err) {
        done(BlockError.from(err, `write on ${this.path} failed`));
      } else if (n < buf.length) {
        this.doWrite(position + n, buf.subarray(n), 0).then(() => done(null), (e: unknown) => done(BlockError.from(e, 'write')));
      } else {
        if (position + n > this.length) this.length = position + n;
        done(null);
      }
    });
  }

  /** One positional read without request accounting (see `pwrite`); bytes past the end read as zeroes. */
  pread(buf: Buffer, position: number): Promise<void> {
    return new Promise((resolve, reject) => this.preadCallback(buf, position, (err) => (err ? reject(err) : resolve())));
  }

  /** `pread` with a completion callback. */
  preadCallback(buf: Buffer, position: number, done: (err: BlockError | null) => void): void {
    if (this.fd < 0) {
      done(new BlockError('ENOMEDIUM', `node ${this.nodeName} is closed`));
      return;
    }
    if (this.inline(buf.length)) {
      callBackLater(() => this.readInline(buf, position), done);
      return;
    }
    fs.read(this.fd, buf, 0, buf.length, position, (err, n) => {
      if (err) {
        done(BlockError.from(err, `read on ${this.path} failed`));
      } else if (n < buf.length && n > 0) {
        this.doRead(position + n, buf.subarray(n)).then(() => done(null), (e: unknown) => done(BlockError.from(e, 'read')));
      } else {
        if (n === 0 && buf.length > 0) buf.fill(0);
        done(null);
      }
    });
  }

  /** Vectored write of several buffers at consecutive offsets, in one system call when it fits. */
  async writev(offset: number, bufs: Buffer[], flags = 0): Promise<void> {
    let total = 0;
    for (const b of bufs) total += b.length;
    if (this.inline(total)) {
      this.inlineIo('write', () => {
        for (let done = 0, list = bufs; done < total;) {
          done += fs.writevSync(this.fd, list, offset + done);
          if (done < total) list = skipBytes(bufs, done);
        }
      });
      if (offset + total > this.length) this.length = offset + total;
      if (flags & Req.FUA) await this.io(fdatasync(this.fd), 'flush');
      return;
    }
    let done = 0;
    let list = bufs;
    while (done < total) {
      const n = await this.io(pwritevOnce(this.fd, list, offset + done), 'write');
      done += n;
      if (done < total) list = skipBytes(bufs, done);
    }
    if (offset + total > this.length) this.length = offset + total;
    if (flags & Req.FUA) await this.io(fdatasync(this.fd), 'flush');
  }

  protected override async doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    // Extending the file yields zeroes without writing them.
    if (offset >= this.length) {
      await this.io(ftruncate(this.fd, offset + length), 'write zeroes');
      this.length = offset + length;
    } else {
      if (flags & Req.NO_FALLBACK) {
        throw new BlockError('ENOTSUP', 'file cannot write zeroes inside the file without writing data');
      }
      for (let done = 0; done < length;) {
        const n = Math.min(ZERO_CHUNK.length, length - done);
        await this.doWrite(offset + done, ZERO_CHUNK.subarray(0, n), 0);
        done += n;
      }
    }
    if (flags & Req.FUA) await this.io(fdatasync(this.fd), 'flush');
  }

  protected async doFlush(): Promise<void> {
    if (this.readOnly) return;
    await this.io(fdatasync(this.fd), 'flush');
  }

  protected override async doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    if (offset >= this.length) return { length, flags: Status.ZERO | Status.ALLOCATED, offset: -1 };
    const n = Math.min(length, this.length - offset);
    return { length: n, flags: Status.DATA | Status.ALLOCATED | Status.OFFSET_VALID, offset };
  }

  /** Sets the file length (used by formats that shrink or preallocate their image). */
  async truncate(length: number): Promise<void> {
    if (this.readOnly) throw new BlockError('EROFS', `node ${this.nodeName} is read-only`);
    await this.io(ftruncate(this.fd, length), 'truncate');
    this.length = length;
  }

  protected override async doClose(): Promise<void> {
    const fd = this.fd;
    this.fd = -1;
    await new Promise<void>((resolve, reject) => fs.close(fd, (err) => (err ? reject(err) : resolve())));
  }

  private async io<T>(p: Promise<T>, op: string): Promise<T> {
    try {
      return await p;
    } catch (err) {
      throw BlockError.from(err, `${op} on ${this.path} failed`);
    }
  }
}

/** Runs `io` now and reports its outcome to `done` after the caller returned, as a pool request would. */
function callBackLater(io: () => void, done: (err: BlockError | null) => void): void {
  let error: BlockError | null = null;
  try {
    io();
  } catch (err) {
    error = err as BlockError;
  }
  queueMicrotask(() => done(error));
}

function skipBytes(bufs: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  let left = skip;
  for (const b of bufs) {
    if (left >= b.length) { left -= b.length; continue; }
    out.push(left > 0 ? b.subarray(left) : b);
    left = 0;
  }
  return out;
}

export const fileDriver: DriverDefinition = {
  name: 'file',
  kind: 'protocol',
  async open(ctx: OpenContext): Promise<BlockNode> {
    const o = ctx.options;
    const filename = o.string('filename');
    // Accepted for compatibility with QEMU command lines; Node offers no
    // OFD locks and no native AIO, so they change nothing here.
    o.optEnum('locking', ['on', 'off', 'auto']);
    o.optEnum('aio', ['threads', 'native', 'io_uring']);
    o.optBool('x-check-cache-dropped');
    o.optString('aio-max-batch');
    const opts: { nodeName?: string; readOnly?: boolean } = { readOnly: ctx.readOnly };
    if (ctx.nodeName !== undefined) opts.nodeName = ctx.nodeName;
    return FileNode.open(filename, opts);
  },
};
