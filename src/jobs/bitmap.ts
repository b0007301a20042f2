/**
 * A fixed-size bitmap over clusters (or granules) with a running count of set
 * bits. The copy-before-write filter tests one bit per write in its hot path,
 * and a checkpoint re-arms every bit with one fill, so both must stay cheap
 * whatever the amount of data buffered.
 */

export class ClusterBitmap {
  private readonly words: Uint32Array;
  private setBits = 0;

  constructor(readonly length: number, initiallySet = false) {
    this.words = new Uint32Array(Math.ceil(length / 32));
    if (initiallySet) this.setAll();
  }

  /** Number of set bits. */
  get count(): number {
    return this.setBits;
  }

  get(i: number): boolean {
    return (this.words[i >>> 5]! & (1 << (i & 31))) !== 0;
  }

  set(i: number): void {
    const w = i >>> 5;
    const m = 1 << (i & 31);
    const old = this.words[w]!;
    if ((old & m) === 0) {
      this.words[w] = old | m;
      this.setBits++;
    }
  }

  clear(i: number): void {
    const w = i >>> 5;
    const m = 1 << (i & 31);
    const old = this.words[w]!;
    if ((old & m) !== 0) {
      this.words[w] = old & ~m;
      this.setBits--;
    }
  }

  setRange(start: number, end: number): void {
    for (let i = start; i < end; i++) this.set(i);
  }

  clearRange(start: number, end: number): void {
    for (let i = start; i < end; i++) this.clear(i);
  }

  setAll(): void {
    this.words.fill(0xffffffff);
    const tail = this.length & 31;
    if (tail !== 0) this.words[this.words.length - 1] = (2 ** tail - 1) >>> 0;
    this.setBits = this.length;
  }

  clearAll(): void {
    this.words.fill(0);
    this.setBits = 0;
  }

  /** Whether any bit in [start, end) is set. */
  anySet(start: number, end: number): boolean {
    if (this.setBits === 0 || start >= end) return false;
    if (this.setBits === this.length) return true;
    let i = start;
    // Bit by bit up to a word boundary, then whole words.
    while (i < end && (i & 31) !== 0) {
      if (this.get(i)) return true;
      i++;
    }
    while (i + 32 <= end) {
      if (this.words[i >>> 5] !== 0) return true;
      i += 32;
    }
    while (i < end) {
      if (this.get(i)) return true;
      i++;
    }
    return false;
  }

  /** The first set bit in [from, limit), or -1. */
  nextSet(from: number, limit = this.length): number {
    if (this.setBits === 0) return -1;
    let i = from;
    while (i < limit) {
      const word = this.words[i >>> 5]!;
      if (word === 0) {
        i = (i | 31) + 1;
        continue;
      }
      if ((word & (1 << (i & 31))) !== 0) return i;
      i++;
    }
    return -1;
  }
}
