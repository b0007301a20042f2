/**
 * Disk images in tmpfs and the data checks. Every system starts from the
 * same random base image (as in the anchor: fully allocated, identical on
 * both sides), and the checks compare whole disks byte for byte.
 */
import { randomFillSync } from 'node:crypto';
import { closeSync, copyFileSync, openSync, readSync, writeSync } from 'node:fs';
import { runSync } from './processes.js';

const CHUNK = 16 << 20;

/** Writes `size` random bytes to `path`. */
export function createRandomImage(path: string, size: number): void {
  const fd = openSync(path, 'w');
  try {
    const buf = Buffer.allocUnsafe(Math.min(CHUNK, size));
    for (let at = 0; at < size; at += buf.length) {
      const n = Math.min(buf.length, size - at);
      randomFillSync(buf, 0, n);
      writeSync(fd, buf, 0, n, at);
    }
  } finally {
    closeSync(fd);
  }
}

/** A full copy (the base is random, so the copy has no holes either). */
export function copyImage(src: string, dst: string): void {
  copyFileSync(src, dst);
}

/** COLO's overlays on the secondary: hidden (backing: the secondary disk), active (backing: hidden). */
export function createColoOverlays(secondary: string, hidden: string, active: string, size: number, commandLog: string): void {
  for (const [file, backing, fmt] of [[hidden, secondary, 'raw'], [active, hidden, 'qcow2']] as const) {
    const r = runSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', fmt, file, String(size)], commandLog);
    if (r.status !== 0) throw new Error(`qemu-img create ${file} failed: ${r.stderr.trim()}`);
  }
}

/** Reads `length` bytes at `offset` of a file. */
export function readRange(path: string, offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  const fd = openSync(path, 'r');
  try {
    let at = 0;
    while (at < length) {
      const n = readSync(fd, out, at, Math.min(CHUNK, length - at), offset + at);
      if (n === 0) throw new Error(`${path} is shorter than ${offset + length} bytes`);
      at += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Reads a whole file of `size` bytes. */
export function readImage(path: string, size: number): Buffer {
  return readRange(path, 0, size);
}

/** Offset of the first byte where `a` and `b` differ, or null when equal (lengths included). */
export function firstDifference(a: Buffer, b: Buffer): number | null {
  const n = Math.min(a.length, b.length);
  for (let at = 0; at < n; at += CHUNK) {
    const end = Math.min(at + CHUNK, n);
    if (a.subarray(at, end).equals(b.subarray(at, end))) continue;
    for (let i = at; i < end; i++) if (a[i] !== b[i]) return i;
  }
  return a.length === b.length ? null : n;
}

/** Byte comparison of a file with expected contents; throws with the first differing offset. */
export function expectFileEquals(path: string, expected: Buffer, what: string): void {
  const actual = readImage(path, expected.length);
  const d = firstDifference(actual, expected);
  if (d !== null) {
    throw new DataCheckError(`${what}: ${path} differs from the model at byte ${d} (0x${d.toString(16)}): `
      + `got 0x${(actual[d] ?? 0).toString(16)}, expected 0x${(expected[d] ?? 0).toString(16)}`);
  }
}

/** The anchor's replication check: `qemu-img compare -U -f raw -F raw primary secondary`. */
export function expectImagesIdentical(primary: string, secondary: string, commandLog: string, what: string): void {
  const r = runSync('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'raw', primary, secondary], commandLog);
  if (r.status !== 0) {
    throw new DataCheckError(`${what}: primary and secondary disks differ (qemu-img compare rc=${r.status}): ${(r.stdout + r.stderr).trim()}`);
  }
}

/** A data check failed: the system lost or corrupted data, so its numbers do not count. */
export class DataCheckError extends Error {
  override readonly name = 'DataCheckError';
}
