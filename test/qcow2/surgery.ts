/**
 * Byte-level edits of qcow2 files for tests that inject damage: header
 * fields, L1/L2 entries and refcounts (16-bit refcounts only).
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';

function withFile<T>(path: string, fn: (fd: number) => T): T {
  const fd = openSync(path, 'r+');
  try {
    return fn(fd);
  } finally {
    closeSync(fd);
  }
}

export function readBytes(path: string, offset: number, length: number): Buffer {
  return withFile(path, (fd) => {
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, offset);
    return buf;
  });
}

export function writeBytes(path: string, offset: number, data: Buffer): void {
  withFile(path, (fd) => { writeSync(fd, data, 0, data.length, offset); });
}

export function fileSize(path: string): number {
  return withFile(path, (fd) => fstatSync(fd).size);
}

export function readU64(path: string, offset: number): bigint {
  return readBytes(path, offset, 8).readBigUInt64BE(0);
}

export function writeU64(path: string, offset: number, value: bigint): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(value);
  writeBytes(path, offset, b);
}

export function writeU32(path: string, offset: number, value: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value);
  writeBytes(path, offset, b);
}

export interface Layout {
  clusterSize: number;
  l1Offset: number;
  reftableOffset: number;
}

export function layout(path: string): Layout {
  const h = readBytes(path, 0, 104);
  return {
    clusterSize: 2 ** h.readUInt32BE(20),
    l1Offset: Number(h.readBigUInt64BE(40)),
    reftableOffset: Number(h.readBigUInt64BE(48)),
  };
}

const OFFSET_MASK = 0x00fffffffffffe00n;

/** File offset of the L1 entry and L2 entry that map a guest offset. */
export function l2EntryPos(path: string, guest: number): { l1Pos: number; l2Pos: number; l2Offset: number } {
  const { clusterSize, l1Offset } = layout(path);
  const perTable = clusterSize / 8;
  const cluster = Math.floor(guest / clusterSize);
  const l1Pos = l1Offset + Math.floor(cluster / perTable) * 8;
  const l2Offset = Number(readU64(path, l1Pos) & OFFSET_MASK);
  return { l1Pos, l2Pos: l2Offset + (cluster % perTable) * 8, l2Offset };
}

export function hostOffset(path: string, guest: number): number {
  return Number(readU64(path, l2EntryPos(path, guest).l2Pos) & OFFSET_MASK);
}

/** File offset of the 16-bit refcount of a host cluster (refblock must exist). */
export function refcountPos(path: string, cluster: number): number {
  const { clusterSize, reftableOffset } = layout(path);
  const perBlock = clusterSize / 2;
  const block = Number(readU64(path, reftableOffset + Math.floor(cluster / perBlock) * 8) & 0xfffffffffffffe00n);
  if (block === 0) throw new Error(`no refblock for cluster ${cluster}`);
  return block + (cluster % perBlock) * 2;
}

export function setRefcount16(path: string, cluster: number, value: number): void {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(value);
  writeBytes(path, refcountPos(path, cluster), b);
}
