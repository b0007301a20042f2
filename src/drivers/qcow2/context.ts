/**
 * What the request paths (read, write, zero/discard, status, make-empty)
 * need from the node, and helpers they share.
 */
import type { BlockNode } from '../../block/node.js';
import type { CompressedReader } from './compressed.js';
import { entryOffset, l2ReservedBits } from './format.js';
import type { Qcow2State } from './state.js';

export interface Qcow2RuntimeOptions {
  /** Guest discards keep host clusters allocated (QEMU's discard-no-unref). */
  discardNoUnref: boolean;
  /**
   * Emptying the image keeps its file length (colo-blk's
   * `x-empty-keeps-space`): the freed clusters are reused in place by later
   * writes instead of being given back and allocated afresh, which on tmpfs
   * and most file systems costs several times a plain overwrite.
   */
  emptyKeepsSpace: boolean;
}

export interface Qcow2Io {
  readonly state: Qcow2State;
  readonly compressed: CompressedReader;
  readonly backing: BlockNode | null;
  readonly size: number;
  readonly runtime: Qcow2RuntimeOptions;
}

/** Reads what the backing chain shows at [offset, offset + dest.length): zeroes past its end or without one. */
export async function readBacking(io: Qcow2Io, offset: number, dest: Buffer): Promise<void> {
  const backing = io.backing;
  if (!backing || offset >= backing.size) {
    dest.fill(0);
    return;
  }
  const n = Math.min(dest.length, backing.size - offset);
  await backing.read(offset, n === dest.length ? dest : dest.subarray(0, n));
  if (n < dest.length) dest.fill(0, n);
}

/** True when the backing chain certainly reads zeroes at [offset, offset + length). */
export function backingIsZero(io: Qcow2Io, offset: number): boolean {
  const backing = io.backing;
  return !backing || offset >= backing.size;
}

/**
 * The host offset of a data cluster (NORMAL or ZERO_ALLOC entry), validated:
 * reserved bits clear, cluster-aligned, inside the file, not on metadata.
 */
export function hostCluster(io: Qcow2Io, hi: number, lo: number, guestCluster: number): number {
  const st = io.state;
  const off = entryOffset(hi, lo);
  if (l2ReservedBits(hi, lo)) {
    throw st.corruption(`L2 entry for guest cluster ${guestCluster} has reserved bits set`);
  }
  if (off % st.clusterSize !== 0) {
    throw st.corruption(`data cluster offset 0x${off.toString(16)} unaligned (guest offset 0x${(guestCluster * st.clusterSize).toString(16)})`);
  }
  if (off >= st.file.length) {
    throw st.corruption(`data cluster offset 0x${off.toString(16)} (guest offset 0x${(guestCluster * st.clusterSize).toString(16)}) lies past the end of the image file`);
  }
  const kind = st.meta.kindOf(off / st.clusterSize);
  if (kind) {
    throw st.corruption(`data cluster offset 0x${off.toString(16)} (guest offset 0x${(guestCluster * st.clusterSize).toString(16)}) overlaps the ${kind}`);
  }
  return off;
}

const ZEROES = Buffer.alloc(64 * 1024);

/** True when every byte of buf is zero. */
export function isAllZero(buf: Buffer): boolean {
  for (let at = 0; at < buf.length; at += ZEROES.length) {
    const n = Math.min(ZEROES.length, buf.length - at);
    if (buf.compare(ZEROES, 0, n, at, at + n) !== 0) return false;
  }
  return true;
}
