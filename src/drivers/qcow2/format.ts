/**
 * qcow2 on-disk constants and the bit-level helpers every other module of the
 * driver shares: table entry decoding (without BigInt on the hot path) and
 * refcount entries of any width.
 */

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** QEMU's caps: the reftable at 8 MiB, the L1 table at 32 MiB. */
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MAX_L1_BYTES = 32 * 1024 * 1024;
export const MAX_BACKING_NAME = 1023;
export const V2_HEADER_LENGTH = 72;
export const V3_HEADER_LENGTH = 112;

export const Incompat = {
  DIRTY: 1,
  CORRUPT: 2,
  DATA_FILE: 4,
  COMPRESSION: 8,
  EXTL2: 16,
} as const;
export const KNOWN_INCOMPAT = 0x1f;

export const Compat = { LAZY_REFCOUNTS: 1 } as const;
export const Autoclear = { BITMAPS: 1, DATA_FILE_RAW: 2 } as const;

export const Ext = {
  END: 0,
  BACKING_FORMAT: 0xe2792aca,
  FEATURE_TABLE: 0x6803f857,
  BITMAPS: 0x23852875,
  CRYPTO: 0x0537be77,
  DATA_FILE: 0x44415441,
} as const;

// 64-bit entries are handled as two big-endian 32-bit halves.
const TWO32 = 4294967296;
const OFFSET_HI_MASK = 0x00ffffff; // bits 32..55
const OFFSET_LO_MASK = 0xfffffe00; // bits 9..31

export const L2_COPIED_HI = 0x80000000;
export const L2_COMPRESSED_HI = 0x40000000;
export const L2_ZERO_LO = 0x1;
const L2_RESERVED_HI = 0x3f000000;
const L2_RESERVED_LO = 0x1fe;
const L1_RESERVED_HI = 0x7f000000;
const L1_RESERVED_LO = 0x1ff;
const REFT_RESERVED_LO = 0x1ff;

/** The host offset held in bits 9..55 of an L1/L2/reftable entry. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & OFFSET_HI_MASK) * TWO32 + ((lo & OFFSET_LO_MASK) >>> 0);
}

export function readHi(buf: Buffer, index: number): number {
  return buf.readUInt32BE(index * 8);
}

export function readLo(buf: Buffer, index: number): number {
  return buf.readUInt32BE(index * 8 + 4);
}

/** Writes a 64-bit entry from an offset (< 2^53) and flag halves. */
export function writeEntry(buf: Buffer, index: number, offset: number, flagsHi: number, flagsLo: number): void {
  const hi = Math.floor(offset / TWO32);
  const lo = offset - hi * TWO32;
  buf.writeUInt32BE(((hi | flagsHi) >>> 0), index * 8);
  buf.writeUInt32BE(((lo | flagsLo) >>> 0), index * 8 + 4);
}

export function readU64(buf: Buffer, pos: number): number {
  return buf.readUInt32BE(pos) * TWO32 + buf.readUInt32BE(pos + 4);
}

export function writeU64(buf: Buffer, pos: number, value: number): void {
  const hi = Math.floor(value / TWO32);
  buf.writeUInt32BE(hi >>> 0, pos);
  buf.writeUInt32BE((value - hi * TWO32) >>> 0, pos + 4);
}

/** QEMU's cluster types, as the driver classifies L2 entries. */
export const enum ClusterType {
  UNALLOCATED = 0,
  ZERO_PLAIN = 1,
  ZERO_ALLOC = 2,
  NORMAL = 3,
  COMPRESSED = 4,
}

export function l2Type(hi: number, lo: number): ClusterType {
  if (hi & L2_COMPRESSED_HI) return ClusterType.COMPRESSED;
  const off = (hi & OFFSET_HI_MASK) !== 0 || (lo & OFFSET_LO_MASK) !== 0;
  if (lo & L2_ZERO_LO) return off ? ClusterType.ZERO_ALLOC : ClusterType.ZERO_PLAIN;
  return off ? ClusterType.NORMAL : ClusterType.UNALLOCATED;
}

/** Reserved bits of a standard (non-compressed) L2 entry that must be 0. */
export function l2ReservedBits(hi: number, lo: number): boolean {
  return (hi & L2_RESERVED_HI) !== 0 || (lo & L2_RESERVED_LO) !== 0;
}

export function l1ReservedBits(hi: number, lo: number): boolean {
  return (hi & L1_RESERVED_HI) !== 0 || (lo & L1_RESERVED_LO) !== 0;
}

export function reftableReservedBits(lo: number): boolean {
  return (lo & REFT_RESERVED_LO) !== 0;
}

/** Where a compressed cluster's bytes live: [offset, offset + length). */
export interface CompressedExtent {
  offset: number;
  length: number;
}

/**
 * Decodes a compressed-cluster descriptor. With x = 62 - (cluster_bits - 8),
 * bits 0..x-1 are the byte offset and bits x..61 the count of extra 512-byte
 * sectors after the one holding the offset.
 */
export function compressedExtent(hi: number, lo: number, clusterBits: number): CompressedExtent {
  const entry = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
  const shift = BigInt(62 - (clusterBits - 8));
  const offset = Number(entry & ((1n << shift) - 1n));
  const sectors = Number((entry >> shift) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1;
  return { offset, length: sectors * 512 - (offset & 511) };
}

// ---------------------------------------------------------------- refcounts

/**
 * Reads refcount `index` of a refblock whose entries are 2^order bits wide.
 * Sub-byte entries are packed from the least significant bit.
 */
export function getRefcount(block: Buffer, index: number, order: number): number {
  switch (order) {
    case 4: return block.readUInt16BE(index * 2);
    case 0: return (block[index >>> 3]! >>> (index & 7)) & 1;
    case 1: return (block[index >>> 2]! >>> ((index & 3) * 2)) & 3;
    case 2: return (block[index >>> 1]! >>> ((index & 1) * 4)) & 15;
    case 3: return block[index]!;
    case 5: return block.readUInt32BE(index * 4);
    default: return readU64(block, index * 8);
  }
}

export function setRefcount(block: Buffer, index: number, order: number, value: number): void {
  switch (order) {
    case 4: block.writeUInt16BE(value, index * 2); return;
    case 0: {
      const b = index >>> 3;
      const s = index & 7;
      block[b] = (block[b]! & ~(1 << s)) | (value << s);
      return;
    }
    case 1: {
      const b = index >>> 2;
      const s = (index & 3) * 2;
      block[b] = (block[b]! & ~(3 << s)) | (value << s);
      return;
    }
    case 2: {
      const b = index >>> 1;
      const s = (index & 1) * 4;
      block[b] = (block[b]! & ~(15 << s)) | (value << s);
      return;
    }
    case 3: block[index] = value; return;
    case 5: block.writeUInt32BE(value, index * 4); return;
    default: writeU64(block, index * 8, value);
  }
}

export function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

export function divRoundUp(a: number, b: number): number {
  return Math.ceil(a / b);
}
