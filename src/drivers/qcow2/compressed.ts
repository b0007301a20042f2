/**
 * Compressed clusters (deflate, as `qemu-img convert -c` writes them): read
 * the descriptor's byte range, inflate off the event loop, and keep the last
 * few clusters since sequential readers touch each one many times.
 */
import { inflateRaw, constants as zc } from 'node:zlib';
import { compressedExtent } from './format.js';
import type { Qcow2State } from './state.js';

const KEEP = 4;

function inflate(input: Buffer, clusterSize: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // The last sector usually carries trailing bytes (the next cluster's data
    // or padding): sync-flush mode stops cleanly at the end of the stream.
    inflateRaw(input, { finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: clusterSize }, (err, out) => (err ? reject(err) : resolve(out)));
  });
}

export class CompressedReader {
  private readonly recent: Array<{ key: string; data: Buffer }> = [];

  constructor(private readonly state: Qcow2State) {}

  /** Copies bytes [from, from + dest.length) of the decompressed cluster into dest. */
  async read(hi: number, lo: number, from: number, dest: Buffer): Promise<void> {
    const data = await this.cluster(hi, lo);
    data.copy(dest, 0, from, from + dest.length);
  }

  async cluster(hi: number, lo: number): Promise<Buffer> {
    const key = `${hi}:${lo}`;
    const hit = this.recent.find((r) => r.key === key);
    if (hit) return hit.data;
    const st = this.state;
    const cs = st.clusterSize;
    const { offset, length } = compressedExtent(hi, lo, st.clusterBits);
    if (offset >= st.file.length) {
      throw st.corruption(`compressed cluster at 0x${offset.toString(16)} lies past the end of the image file`);
    }
    if (st.meta.overlap(Math.floor(offset / cs), Math.floor((offset + length - 1) / cs) - Math.floor(offset / cs) + 1)) {
      throw st.corruption(`compressed cluster at 0x${offset.toString(16)} overlaps metadata`);
    }
    const raw = Buffer.allocUnsafe(length);
    await st.file.read(offset, raw);
    let out: Buffer;
    try {
      out = await inflate(raw, cs);
    } catch (err) {
      throw st.corruption(`compressed cluster at 0x${offset.toString(16)} does not decompress: ${(err as Error).message}`);
    }
    if (out.length < cs) {
      throw st.corruption(`compressed cluster at 0x${offset.toString(16)} decompresses to ${out.length} bytes, not ${cs}`);
    }
    this.recent.push({ key, data: out });
    if (this.recent.length > KEEP) this.recent.shift();
    return out;
  }

  clear(): void {
    this.recent.length = 0;
  }
}
