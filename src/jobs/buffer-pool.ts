/**
 * Reusable bounce buffers for copies (copy-before-write, commit). A fresh
 * buffer per copy costs first-touch page faults, which on some hosts cost
 * more than the copy itself; a few warm buffers avoid them. Bounded: beyond
 * `keep` buffers, returned ones are left to the garbage collector.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(readonly bufferSize: number, private readonly keep: number) {}

  /** A buffer of exactly `length` bytes (at most `bufferSize`), contents undefined. */
  take(length: number): Buffer {
    if (length > this.bufferSize) return Buffer.allocUnsafe(length);
    const buf = this.free.pop() ?? Buffer.allocUnsafeSlow(this.bufferSize);
    return buf.subarray(0, length);
  }

  /** Returns a buffer from `take` once nothing refers to it any more. */
  give(buf: Buffer): void {
    if (this.free.length >= this.keep || buf.buffer.byteLength !== this.bufferSize) return;
    this.free.push(Buffer.from(buf.buffer, buf.byteOffset - (buf.byteOffset % this.bufferSize), this.bufferSize));
  }
}
