/**
 * The byte model of a COLO pair and the checks against real images.
 *
 * The model keeps the primary's disk and the secondary VM's view. A primary
 * write changes the primary (and, through replication, the secondary disk);
 * a view write changes the view only; a checkpoint makes the view equal to
 * the primary; after a failover the surviving disk is the view: the last
 * checkpoint plus the view's own writes (spec section 5.3).
 *
 * The starting content is piecewise constant (one byte value per 16 KiB
 * block, never zero), so `qemu-io read -P` can check every byte of an image
 * run by run, and a cluster copied from the wrong place shows.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { run, runOk } from '../helpers/env.js';
import type { Format } from './pair.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
const BLOCK = 16 * KiB;

export function baseContent(size: number): Buffer {
  const buf = Buffer.alloc(size);
  for (let off = 0, i = 0; off < size; off += BLOCK, i++) buf.fill(1 + ((i * 37) % 251), off, Math.min(off + BLOCK, size));
  return buf;
}

/** `fua`: a write with FUA; `zero-unmap`: write-zeroes that may unmap. */
export type WriteKind = 'write' | 'fua' | 'zero' | 'zero-unmap' | 'discard';

export class PairModel {
  primary: Buffer;
  view: Buffer;
  failedOver = false;

  constructor(base: Buffer) {
    this.primary = Buffer.from(base);
    this.view = Buffer.from(base);
  }

  primaryWrite(kind: WriteKind, offset: number, length: number, pattern: number): void {
    apply(this.primary, kind, offset, length, pattern);
  }

  viewWrite(kind: WriteKind, offset: number, length: number, pattern: number): void {
    apply(this.view, kind, offset, length, pattern);
  }

  checkpoint(): void {
    this.view = Buffer.from(this.primary);
  }

  failover(): void {
    this.failedOver = true;
  }

  /** What the secondary disk holds: the primary's data while replicating, the view after failover. */
  get secondaryDisk(): Buffer {
    return this.failedOver ? this.view : this.primary;
  }
}

function apply(disk: Buffer, kind: WriteKind, offset: number, length: number, pattern: number): void {
  // Discard is a successful no-op through quorum and replication (spec 1.4, 9.7).
  if (kind === 'discard') return;
  disk.fill(kind === 'zero' || kind === 'zero-unmap' ? 0 : pattern, offset, offset + length);
}

/** The qemu-io command for one write. */
export function qemuIoCommand(kind: WriteKind, offset: number, length: number, pattern: number): string {
  switch (kind) {
    case 'write': return `write -P ${pattern} ${offset} ${length}`;
    case 'fua': return `write -f -P ${pattern} ${offset} ${length}`;
    case 'zero': return `write -z ${offset} ${length}`;
    case 'zero-unmap': return `write -z -u ${offset} ${length}`;
    case 'discard': return `discard ${offset} ${length}`;
  }
}

/** Runs qemu-io commands against an image or NBD URI; any failed command or pattern mismatch throws. */
export async function qemuIo(target: string, format: Format, commands: string[], readOnly = false): Promise<string> {
  const args = ['-f', format, ...(readOnly ? ['-r'] : [])];
  for (const c of commands) args.push('-c', c);
  args.push(target);
  const r = await run('qemu-io', args);
  const out = r.stdout + r.stderr;
  if (r.status !== 0 || /Pattern verification failed|failed:|error/i.test(out)) {
    throw new Error(`qemu-io ${target} (${commands.length} commands) failed (exit ${r.status}):\n${out.split('\n').filter((l) => !/^(read|wrote|discard)|ops;/.test(l)).slice(0, 10).join('\n')}`);
  }
  return out;
}

/** Runs of equal bytes, as `read -P` commands (`at`: where `content` starts in the image). */
export function patternReads(content: Buffer, at = 0): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 1; i <= content.length; i++) {
    if (i === content.length || content[i] !== content[start]) {
      out.push(`read -P ${content[start]} ${at + start} ${i - start}`);
      start = i;
    }
  }
  return out;
}

/** Every byte of an image (file or NBD URI) checked with `qemu-io read -P`, run by run. */
export async function verifyEveryByte(target: string, format: Format, expected: Buffer): Promise<void> {
  const reads = patternReads(expected);
  // Batches keep each command line well under the kernel's limit.
  for (let i = 0; i < reads.length; i += 2000) await qemuIo(target, format, reads.slice(i, i + 2000), true);
}

/** The whole content of an image or NBD export, as qemu-img reads it. */
export async function readAll(target: string, format: Format, scratch: string): Promise<Buffer> {
  await runOk('qemu-img', ['convert', '-U', '-f', format, '-O', 'raw', target, scratch]);
  const data = readFileSync(scratch);
  rmSync(scratch);
  return data;
}

/** `qemu-img compare` of two images; resolves to null when identical, else qemu-img's words. */
export async function compareImages(a: string, aFormat: Format, b: string, bFormat: Format): Promise<string | null> {
  const r = await run('qemu-img', ['compare', '-U', '-f', aFormat, '-F', bFormat, a, b]);
  if (r.status === 0) return null;
  return `${r.stdout}${r.stderr}`.trim() || `qemu-img compare exited ${r.status}`;
}

/** A raw file with the model's content, to compare images against. */
export function modelImage(path: string, content: Buffer): string {
  writeFileSync(path, content);
  return path;
}

/** Where two buffers first differ, for assertion messages. */
export function firstDifference(actual: Buffer, expected: Buffer): string {
  if (actual.length !== expected.length) return `length ${actual.length}, expected ${expected.length}`;
  const i = actual.findIndex((v, k) => v !== expected[k]);
  if (i < 0) return 'identical';
  let end = i;
  while (end < actual.length && actual[end] !== expected[end]) end++;
  return `bytes ${i}..${end - 1} differ: 0x${actual[i]!.toString(16)} where 0x${expected[i]!.toString(16)} was expected`;
}

/** `qemu-img check` of a qcow2 image: null when clean, else its report. */
export async function checkQcow2(path: string): Promise<string | null> {
  const r = await run('qemu-img', ['check', '-U', path]);
  if (r.status === 0) return null;
  return `qemu-img check ${path} exited ${r.status}: ${(r.stdout + r.stderr).trim()}`;
}
