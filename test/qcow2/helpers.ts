/**
 * Plumbing for the qcow2 tests: the QEMU tools, opening images through a
 * graph, and byte-level expectations.
 */
import assert from 'node:assert/strict';
import type { BlockGraph } from '../../src/block/graph.js';
import type { BlockNode } from '../../src/block/node.js';
import type { OptionDict } from '../../src/block/options.js';
import { createGraph } from '../../src/drivers/index.js';
import { requireTool, run, runOk, type RunResult } from '../helpers/env.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

export function qemuImg(...args: string[]): Promise<RunResult> {
  requireTool('qemu-img');
  return runOk('qemu-img', args);
}

/** qemu-img without throwing on a non-zero exit (check exits 2/3). */
export function qemuImgStatus(...args: string[]): Promise<RunResult> {
  requireTool('qemu-img');
  return run('qemu-img', args);
}

/** Runs qemu-io commands on an image; fails when any command reports an error or a pattern mismatch. */
export async function qemuIo(image: string, cmds: string[], fmt = 'qcow2'): Promise<string> {
  requireTool('qemu-io');
  const args = ['-f', fmt];
  for (const c of cmds) args.push('-c', c);
  args.push(image);
  const r = await runOk('qemu-io', args);
  const out = r.stdout + r.stderr;
  if (/Pattern verification failed|failed:|error/i.test(out)) throw new Error(`qemu-io reported a failure:\n${out}`);
  return out;
}

export interface CheckJson {
  status: number;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  imageEndOffset?: number;
  raw: string;
}

export async function qemuCheck(image: string, extra: string[] = []): Promise<CheckJson> {
  const r = await qemuImgStatus('check', '--output=json', ...extra, image);
  let parsed: Record<string, number> = {};
  try {
    parsed = JSON.parse(r.stdout) as Record<string, number>;
  } catch {
    // exit 1 may print no JSON
  }
  return {
    status: r.status,
    corruptions: parsed.corruptions ?? 0,
    leaks: parsed.leaks ?? 0,
    checkErrors: parsed['check-errors'] ?? 0,
    imageEndOffset: parsed['image-end-offset'],
    raw: r.stdout + r.stderr,
  };
}

export async function assertQemuCheckClean(image: string): Promise<void> {
  const r = await qemuCheck(image);
  assert.equal(r.status, 0, `qemu-img check is not clean:\n${r.raw}`);
}

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

export async function qemuMap(image: string): Promise<MapEntry[]> {
  const r = await qemuImg('map', '--output=json', image);
  return JSON.parse(r.stdout) as MapEntry[];
}

export function fileNode(path: string): OptionDict {
  return { driver: 'file', filename: path };
}

/** Opens a qcow2 image in a fresh graph. */
export async function openImage(path: string, extra: OptionDict = {}): Promise<{ graph: BlockGraph; node: BlockNode }> {
  const graph = createGraph();
  const node = await graph.add({ driver: 'qcow2', 'node-name': 'img', file: fileNode(path), ...extra });
  return { graph, node };
}

export async function readAll(node: BlockNode, offset = 0, length = node.size): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await node.read(offset, buf);
  return buf;
}

/** Compares two buffers and reports the first differing offset. */
export function assertSameBytes(actual: Buffer, expected: Buffer, what = 'data'): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  if (actual.equals(expected)) return;
  let i = 0;
  while (i < actual.length && actual[i] === expected[i]) i++;
  assert.fail(`${what} differs first at offset ${i} (0x${i.toString(16)}): got ${actual[i]}, expected ${expected[i]}`);
}
