/**
 * A receive buffer for a framed byte stream: bytes in at the end, parsed off
 * the front, with cursors instead of a Buffer.concat per chunk.
 *
 * While nothing is pending, an incoming chunk is adopted as it is, so a frame
 * that lies wholly inside one socket read is parsed (and its payload sliced)
 * without a copy. Leftovers that must wait for the next chunk move into a
 * scratch buffer that is reused and grows only as far as the largest partial
 * frame. Views into an adopted chunk may escape (neither Node's socket chunks
 * nor the server's read slabs are ever reused); views into the scratch
 * buffer never do — `take` copies those.
 *
 * A transient chunk (a socket's reusable `onread` buffer) is adopted only
 * until `detach`, which the reader calls before the buffer is reused; `take`
 * copies out of it too.
 */

const EMPTY = Buffer.alloc(0);
const MIN_SCRATCH = 64 * 1024;

export class RecvBuffer {
  /** The bytes live in `data[pos, end)`. Read them with `data.readUInt32BE(pos + k)`. */
  data: Buffer = EMPTY;
  pos = 0;
  private end = 0;
  private scratch: Buffer | null = null;
  private transient = false;

  get length(): number {
    return this.end - this.pos;
  }

  push(chunk: Buffer, transient = false): void {
    if (chunk.length === 0) return;
    if (this.end === this.pos) {
      this.data = chunk;
      this.pos = 0;
      this.end = chunk.length;
      this.transient = transient;
      return;
    }
    const pending = this.end - this.pos;
    const need = pending + chunk.length;
    if (this.data === this.scratch && this.pos + need <= this.data.length) {
      chunk.copy(this.data, this.end);
      this.end += chunk.length;
      return;
    }
    let target = this.scratch;
    if (!target || target.length < need) {
      target = Buffer.allocUnsafe(Math.max(MIN_SCRATCH, need, target ? target.length * 2 : 0));
      this.scratch = target;
    }
    // copyWithin semantics: the source may be the scratch buffer itself.
    this.data.copy(target, 0, this.pos, this.end);
    chunk.copy(target, pending);
    this.data = target;
    this.pos = 0;
    this.end = need;
    this.transient = false;
  }

  /** Moves unparsed bytes out of a transient chunk before its owner reuses it. */
  detach(): void {
    if (!this.transient) return;
    this.transient = false;
    if (this.end === this.pos) return;
    const pending = this.end - this.pos;
    let target = this.scratch;
    if (!target || target.length < pending) {
      target = Buffer.allocUnsafe(Math.max(MIN_SCRATCH, pending));
      this.scratch = target;
    }
    this.data.copy(target, 0, this.pos, this.end);
    this.data = target;
    this.pos = 0;
    this.end = pending;
  }

  skip(n: number): void {
    this.pos += n;
    if (this.pos === this.end) this.reset();
  }

  /**
   * The next `n` bytes, consumed. A view when they lie in an adopted chunk,
   * else a copy (the scratch buffer is overwritten by later pushes).
   */
  take(n: number): Buffer {
    const start = this.pos;
    const out = this.data === this.scratch || this.transient
      ? Buffer.from(this.data.subarray(start, start + n))
      : this.data.subarray(start, start + n);
    this.skip(n);
    return out;
  }

  /** Copies up to `n` bytes into `dest` at `destOffset`, consuming them; returns how many. */
  copyTo(dest: Buffer, destOffset: number, n: number): number {
    const count = Math.min(n, this.end - this.pos);
    this.data.copy(dest, destOffset, this.pos, this.pos + count);
    this.skip(count);
    return count;
  }

  /** Drops everything buffered. */
  clear(): void {
    this.reset();
  }

  /** Bytes held by the buffer, for memory accounting in tests. */
  get capacity(): number {
    return (this.scratch?.length ?? 0);
  }

  private reset(): void {
    this.transient = false;
    this.data = EMPTY;
    this.pos = 0;
    this.end = 0;
  }
}

/** Reads an unsigned 64-bit big-endian value as a number (exact below 2^53, monotonic above). */
export function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * 0x100000000 + buf.readUInt32BE(at + 4);
}

export function writeU64(buf: Buffer, value: number, at: number): void {
  const hi = Math.floor(value / 0x100000000);
  buf.writeUInt32BE(hi >>> 0, at);
  buf.writeUInt32BE((value - hi * 0x100000000) >>> 0, at + 4);
}
