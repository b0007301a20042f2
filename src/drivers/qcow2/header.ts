/**
 * The qcow2 header and its extensions: parsing with the structural checks
 * that make a damaged header an error rather than a crash, and serialising
 * cluster 0 back (extensions we do not understand are kept verbatim).
 */
import { BlockError } from '../../block/errors.js';
import {
  Ext, Incompat, KNOWN_INCOMPAT, MAX_BACKING_NAME, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, QCOW2_MAGIC,
  V2_HEADER_LENGTH, V3_HEADER_LENGTH, readU64, writeU64,
} from './format.js';

export interface HeaderExtension {
  type: number;
  data: Buffer;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  /** Feature bitmaps are 64 bits wide; bigint keeps unknown high bits exact. */
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** Every extension except the backing format and the end marker, in file order. */
  extensions: HeaderExtension[];
  backingFile?: string;
  backingFormat?: string;
}

/** Byte offsets of header fields that the driver rewrites in place. */
export const HeaderField = {
  L1_TABLE_OFFSET: 40,
  REFCOUNT_TABLE_OFFSET: 48,
  REFCOUNT_TABLE_CLUSTERS: 56,
  INCOMPATIBLE: 72,
  COMPATIBLE: 80,
  AUTOCLEAR: 88,
} as const;

function corrupt(message: string): BlockError {
  return new BlockError('EINVAL', message);
}

/** True when the buffer starts with the qcow2 magic (format probing). */
export function hasQcow2Magic(buf: Buffer): boolean {
  return buf.length >= 4 && buf.readUInt32BE(0) === QCOW2_MAGIC;
}

/** The fixed part: enough to know the cluster size before reading cluster 0. */
export function parseFixedHeader(buf: Buffer): Omit<Qcow2Header, 'extensions' | 'backingFile' | 'backingFormat'> {
  if (buf.length < V2_HEADER_LENGTH) throw corrupt('Image is not in qcow2 format (header is truncated)');
  if (buf.readUInt32BE(0) !== QCOW2_MAGIC) throw corrupt('Image is not in qcow2 format');
  const version = buf.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new BlockError('ENOTSUP', `Unsupported qcow2 version ${version}`);
  const clusterBits = buf.readUInt32BE(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw corrupt(`Unsupported cluster size: 2^${clusterBits}`);
  }
  const h = {
    version: version as 2 | 3,
    backingFileOffset: readU64(buf, 8),
    backingFileSize: buf.readUInt32BE(16),
    clusterBits,
    size: readU64(buf, 24),
    cryptMethod: buf.readUInt32BE(32),
    l1Size: buf.readUInt32BE(36),
    l1TableOffset: readU64(buf, 40),
    refcountTableOffset: readU64(buf, 48),
    refcountTableClusters: buf.readUInt32BE(56),
    nbSnapshots: buf.readUInt32BE(60),
    snapshotsOffset: readU64(buf, 64),
    incompatible: 0n,
    compatible: 0n,
    autoclear: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
  };
  if (version === 3) {
    if (buf.length < 104) throw corrupt('qcow2 header too short');
    h.incompatible = buf.readBigUInt64BE(72);
    h.compatible = buf.readBigUInt64BE(80);
    h.autoclear = buf.readBigUInt64BE(88);
    h.refcountOrder = buf.readUInt32BE(96);
    h.headerLength = buf.readUInt32BE(100);
    if (h.headerLength < 104) throw corrupt('qcow2 header too short');
    if (h.headerLength > 2 ** clusterBits) throw corrupt('qcow2 header exceeds cluster size');
    if (h.headerLength > 104) {
      if (buf.length < 105) throw corrupt('qcow2 header is truncated');
      h.compressionType = buf[104]!;
    }
  }
  if (!Number.isSafeInteger(h.size)) throw corrupt('Image is too big');
  return h;
}

/** Parses header, extensions and backing file name from cluster 0. */
export function parseHeader(cluster0: Buffer): Qcow2Header {
  const fixed = parseFixedHeader(cluster0);
  const header: Qcow2Header = { ...fixed, extensions: [] };
  const clusterSize = 2 ** header.clusterBits;
  const limit = Math.min(cluster0.length, clusterSize);
  // Extensions run from header_length (v3) or 72 (v2) to an end marker or the
  // backing name, whichever comes first.
  const extEnd = header.backingFileOffset > 0 ? Math.min(header.backingFileOffset, limit) : limit;
  let pos = header.headerLength;
  while (pos + 8 <= extEnd) {
    const type = cluster0.readUInt32BE(pos);
    const len = cluster0.readUInt32BE(pos + 4);
    pos += 8;
    if (type === Ext.END) break;
    if (len > extEnd - pos) throw corrupt(`Invalid qcow2 header extension 0x${type.toString(16)}: length ${len} runs past the header`);
    const data = Buffer.from(cluster0.subarray(pos, pos + len));
    if (type === Ext.BACKING_FORMAT) {
      header.backingFormat = data.toString('utf8');
    } else {
      header.extensions.push({ type, data });
    }
    pos += (len + 7) & ~7;
  }
  if (header.backingFileOffset > 0) {
    if (header.backingFileSize > MAX_BACKING_NAME) throw corrupt('Backing file name too long');
    if (header.backingFileOffset + header.backingFileSize > clusterSize) {
      throw corrupt('Invalid backing file offset');
    }
    if (header.backingFileOffset + header.backingFileSize > cluster0.length) {
      throw corrupt('Backing file name lies past the end of the image file');
    }
    header.backingFile = cluster0.toString('utf8', header.backingFileOffset, header.backingFileOffset + header.backingFileSize);
  }
  return header;
}

/** The feature name table QEMU 7.2 writes (only for clusters above 4 KiB). */
function featureTable(): Buffer {
  const names: Array<[number, number, string]> = [
    [0, 0, 'dirty bit'],
    [0, 1, 'corrupt bit'],
    [0, 2, 'external data file'],
    [0, 3, 'compression type'],
    [0, 4, 'extended L2 entries'],
    [1, 0, 'lazy refcounts'],
    [2, 0, 'bitmaps'],
    [2, 1, 'raw external data'],
  ];
  const buf = Buffer.alloc(names.length * 48);
  names.forEach(([type, bit, name], i) => {
    buf[i * 48] = type;
    buf[i * 48 + 1] = bit;
    buf.write(name, i * 48 + 2, 46, 'latin1');
  });
  return buf;
}

export function newFeatureTableExtension(): HeaderExtension {
  return { type: Ext.FEATURE_TABLE, data: featureTable() };
}

/**
 * Serialises cluster 0: fixed header, backing format, the other extensions in
 * the order given, the end marker, then the backing name. Throws when it does
 * not fit in one cluster.
 */
export function serializeHeader(h: Qcow2Header): Buffer {
  const clusterSize = 2 ** h.clusterBits;
  const headerLength = h.version === 3 ? Math.max(h.headerLength, V3_HEADER_LENGTH) : V2_HEADER_LENGTH;
  const exts: HeaderExtension[] = [];
  if (h.backingFormat !== undefined) exts.push({ type: Ext.BACKING_FORMAT, data: Buffer.from(h.backingFormat, 'utf8') });
  exts.push(...h.extensions);
  let extBytes = 8;
  for (const e of exts) extBytes += 8 + ((e.data.length + 7) & ~7);
  const name = h.backingFile !== undefined ? Buffer.from(h.backingFile, 'utf8') : null;
  if (name && name.length > MAX_BACKING_NAME) throw new BlockError('EINVAL', 'Backing file name too long');
  const total = headerLength + extBytes + (name?.length ?? 0);
  if (total > clusterSize) throw new BlockError('ENOSPC', 'qcow2 header and extensions do not fit in one cluster');
  const buf = Buffer.alloc(total);
  buf.writeUInt32BE(QCOW2_MAGIC, 0);
  buf.writeUInt32BE(h.version, 4);
  const nameOffset = headerLength + extBytes;
  writeU64(buf, 8, name ? nameOffset : 0);
  buf.writeUInt32BE(name ? name.length : 0, 16);
  buf.writeUInt32BE(h.clusterBits, 20);
  writeU64(buf, 24, h.size);
  buf.writeUInt32BE(h.cryptMethod, 32);
  buf.writeUInt32BE(h.l1Size, 36);
  writeU64(buf, 40, h.l1TableOffset);
  writeU64(buf, 48, h.refcountTableOffset);
  buf.writeUInt32BE(h.refcountTableClusters, 56);
  buf.writeUInt32BE(h.nbSnapshots, 60);
  writeU64(buf, 64, h.snapshotsOffset);
  if (h.version === 3) {
    buf.writeBigUInt64BE(h.incompatible, 72);
    buf.writeBigUInt64BE(h.compatible, 80);
    buf.writeBigUInt64BE(h.autoclear, 88);
    buf.writeUInt32BE(h.refcountOrder, 96);
    buf.writeUInt32BE(headerLength, 100);
    buf[104] = h.compressionType;
  }
  let pos = headerLength;
  for (const e of exts) {
    buf.writeUInt32BE(e.type, pos);
    buf.writeUInt32BE(e.data.length, pos + 4);
    e.data.copy(buf, pos + 8);
    pos += 8 + ((e.data.length + 7) & ~7);
  }
  pos += 8; // end marker: already zero
  if (name) name.copy(buf, pos);
  h.backingFileOffset = name ? nameOffset : 0;
  h.backingFileSize = name ? name.length : 0;
  h.headerLength = headerLength;
  return buf;
}

/** Names of the incompatible bits, for refusal messages (from the image's own table when it has one). */
export function incompatNames(h: Qcow2Header, bits: bigint): string {
  const names: string[] = [];
  const table = h.extensions.find((e) => e.type === Ext.FEATURE_TABLE)?.data;
  for (let bit = 0; bit < 64; bit++) {
    if (((bits >> BigInt(bit)) & 1n) === 0n) continue;
    let name: string | undefined;
    if (table) {
      for (let p = 0; p + 48 <= table.length; p += 48) {
        if (table[p] === 0 && table[p + 1] === bit) name = table.toString('latin1', p + 2, p + 48).replace(/\0.*$/s, '');
      }
    }
    names.push(name ?? `Unknown incompatible feature: ${(1n << BigInt(bit)).toString(16)}`);
  }
  return names.join(', ');
}

/** Refuses what the driver cannot open; returns nothing when the header is usable. */
export function checkOpenable(h: Qcow2Header, readOnly: boolean): void {
  const unknown = h.incompatible & ~BigInt(KNOWN_INCOMPAT);
  if (unknown !== 0n) throw new BlockError('ENOTSUP', `Unsupported qcow2 feature(s): ${incompatNames(h, unknown)}`);
  const incompat = Number(h.incompatible);
  if (h.cryptMethod !== 0) throw new BlockError('ENOTSUP', 'qcow2 encryption is not supported by colo-blk');
  if (h.extensions.some((e) => e.type === Ext.CRYPTO)) throw new BlockError('ENOTSUP', 'qcow2 encryption is not supported by colo-blk');
  if (incompat & Incompat.DATA_FILE || h.extensions.some((e) => e.type === Ext.DATA_FILE)) {
    throw new BlockError('ENOTSUP', 'qcow2 images with an external data file are not supported by colo-blk');
  }
  if (incompat & Incompat.EXTL2) {
    throw new BlockError('ENOTSUP', 'qcow2 images with extended L2 entries (subclusters) are not supported by colo-blk');
  }
  if (h.compressionType !== 0 || incompat & Incompat.COMPRESSION) {
    if (h.compressionType === 1) throw new BlockError('ENOTSUP', 'qcow2 zstd compression is not supported by colo-blk');
    if (h.compressionType !== 0) throw new BlockError('ENOTSUP', `Unknown compression type ${h.compressionType}`);
    throw new BlockError('EINVAL', 'Compression type incompatible feature bit is set while compression type is zlib');
  }
  if (h.refcountOrder > 6) throw new BlockError('EINVAL', 'Reference count entry width too large; may not exceed 64 bits');
  if (!readOnly && incompat & Incompat.CORRUPT) {
    throw new BlockError('EACCES', 'qcow2: Image is corrupt; cannot be opened read/write (run qemu-img check -r all, or open it read-only)');
  }
  if (!readOnly && h.nbSnapshots > 0) {
    throw new BlockError('ENOTSUP', 'qcow2 images with internal snapshots can only be opened read-only by colo-blk');
  }
  if (h.version === 2 && h.refcountOrder !== 4) throw new BlockError('EINVAL', 'qcow2 v2 images must use 16-bit refcounts');
}
