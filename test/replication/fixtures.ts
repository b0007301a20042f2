/**
 * Layouts of test-replication.c, parameterised by disk kind: `memory` nodes,
 * and real qcow2 images (made by qemu-img) once the qcow2 driver is
 * registered. Every read check pre-fills its buffer with a byte that differs
 * from the expected one and compares every byte.
 */
import assert from 'node:assert/strict';
import { BlockBackend } from '../../src/block/backend.js';
import type { BlockGraph } from '../../src/block/graph.js';
import type { BlockNode } from '../../src/block/node.js';
import type { OptionDict } from '../../src/block/options.js';
import { FaultNode } from '../../src/drivers/fault.js';
import { builtinDrivers, createGraph } from '../../src/drivers/index.js';
import { ReplicationNode } from '../../src/replication/node.js';
import { replicationRegistry, type ReplicationRegistry } from '../../src/replication/registry.js';
import { requireTool, runOk, tempDir } from '../helpers/env.js';
import { locklessOverlayDriver } from './lockless-overlay.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

export type DiskKind = 'memory' | 'qcow2';

/** Disk kinds the tests run on: qcow2 joins as soon as its driver is registered. */
export const DISK_KINDS: readonly DiskKind[] = builtinDrivers.some((d) => d.name === 'qcow2')
  ? ['memory', 'qcow2']
  : ['memory'];

export interface Disks {
  graph: BlockGraph;
  registry: ReplicationRegistry;
  cleanup(): Promise<void>;
}

/** Opens a disk of `kind` (a fresh image for qcow2) as a blockdev dictionary. */
export class DiskFactory {
  private dir: ReturnType<typeof tempDir> | null = null;
  private n = 0;

  constructor(readonly kind: DiskKind) {}

  /** A standalone disk of `size` bytes. */
  async disk(nodeName: string, size: number, opts: { backing?: string | OptionDict; fault?: boolean; readWrite?: boolean } = {}): Promise<OptionDict> {
    let dict: OptionDict;
    if (this.kind === 'memory') {
      dict = { driver: 'memory', 'node-name': nodeName, size };
      if (opts.backing !== undefined) dict.backing = opts.backing;
    } else {
      const file = await this.image(size);
      const protocol: OptionDict = opts.fault
        ? { driver: 'fault', 'node-name': `${nodeName}-fault`, file: { driver: 'file', filename: file } }
        : { driver: 'file', filename: file };
      dict = { driver: 'qcow2', 'node-name': nodeName, file: protocol };
      if (opts.backing !== undefined) dict.backing = opts.backing;
      // qcow2 opens an inline backing read-only (as QEMU does); replication
      // would have to reopen it, which needs the driver's `reopen`.
      if (opts.readWrite) dict['read-only'] = false;
      return dict;
    }
    return opts.fault ? { driver: 'fault', 'node-name': `${nodeName}-fault`, file: dict } : dict;
  }

  cleanup(): void {
    this.dir?.cleanup();
  }

  private async image(size: number): Promise<string> {
    requireTool('qemu-img');
    this.dir ??= tempDir('colo-blk-repl-');
    const path = this.dir.file(`disk${this.n++}.qcow2`);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(size)]);
    return path;
  }
}

export interface SecondaryFixture extends Disks {
  factory: DiskFactory;
  /** The secondary disk ("secondary-local-disk-id" in test-replication.c). */
  local: BlockNode;
  /** Plays the NBD export: primary writes arrive here. */
  localBB: BlockBackend;
  repl: ReplicationNode;
  /** The secondary VM's view ("secondary-id"). */
  top: BlockBackend;
  active: BlockNode;
  hidden: BlockNode;
}

export interface SecondaryOptions {
  size?: number;
  /** Byte the local disk is filled with before replication (0x11 in QEMU's test). */
  fill?: number | null;
  topId?: string;
  /** Put a `fault` filter on the secondary disk (its BlockBackend sits on the filter). */
  faultyLocal?: boolean;
  activeCluster?: number;
  /** A hidden disk without internal locking (see lockless-overlay.ts). Memory kind only. */
  locklessHidden?: boolean;
}

/** start_secondary(): local disk, then replication over active -> hidden -> local. */
export async function secondaryFixture(kind: DiskKind, opts: SecondaryOptions = {}): Promise<SecondaryFixture> {
  const size = opts.size ?? 64 * MiB;
  const factory = new DiskFactory(kind);
  const graph = createGraph();
  const registry = replicationRegistry(graph);
  const localDict = await factory.disk('local', size);
  let local = await graph.add(localDict);
  if (opts.faultyLocal) {
    local = await graph.add({ driver: 'fault', 'node-name': 'local-fault', file: 'local' });
  }
  const localBB = new BlockBackend('secondary-local-disk-id', local);
  if (opts.fill !== null) await localBB.write(0, Buffer.alloc(size, opts.fill ?? 0x11));
  if (opts.locklessHidden) graph.register(locklessOverlayDriver);
  const hidden = opts.locklessHidden
    ? { driver: 'lockless-overlay', 'node-name': 'hidden', backing: local.nodeName }
    : await factory.disk('hidden', size, { backing: local.nodeName, readWrite: true });
  const active = await factory.disk('active', size, { backing: hidden });
  if (opts.activeCluster && kind === 'memory') active['cluster-size'] = opts.activeCluster;
  const repl = await graph.add({
    driver: 'replication',
    'node-name': 'repl',
    mode: 'secondary',
    'top-id': opts.topId ?? 'secondary-id',
    file: active,
  }) as ReplicationNode;
  const top = new BlockBackend('secondary-id', repl);
  return {
    graph,
    registry,
    factory,
    local,
    localBB,
    repl,
    top,
    active: graph.lookup('active')!,
    hidden: graph.lookup('hidden')!,
    cleanup: async () => {
      // Parked requests would keep the nodes from draining.
      for (const n of graph.allNodes()) if (n instanceof FaultNode) n.clearRules();
      top.detach();
      localBB.detach();
      await graph.closeAll();
      factory.cleanup();
    },
  };
}

export interface PrimaryFixture extends Disks {
  repl: ReplicationNode;
  bb: BlockBackend;
  disk: BlockNode;
}

/** start_primary(): replication over a local disk, as BlockBackend "primary-id". */
export async function primaryFixture(kind: DiskKind, opts: { size?: number; fault?: boolean } = {}): Promise<PrimaryFixture> {
  const size = opts.size ?? 64 * MiB;
  const factory = new DiskFactory(kind);
  const graph = createGraph();
  const file = await factory.disk('pdisk', size, { fault: opts.fault ?? false });
  const repl = await graph.add({ driver: 'replication', 'node-name': 'xxx', mode: 'primary', file }) as ReplicationNode;
  const bb = new BlockBackend('primary-id', repl);
  return {
    graph,
    registry: replicationRegistry(graph),
    repl,
    bb,
    disk: repl.file!,
    cleanup: async () => {
      for (const n of graph.allNodes()) if (n instanceof FaultNode) n.clearRules();
      bb.detach();
      await graph.closeAll();
      factory.cleanup();
    },
  };
}

// ------------------------------------------------------------- byte checks

/** A byte that is not `expected`, for pre-filling read buffers. */
function other(expected: number): number {
  return expected === 0xa5 ? 0x5a : 0xa5;
}

interface Readable {
  read(offset: number, buf: Buffer): Promise<void>;
}

/** Reads [offset, offset+length) and asserts every byte is `pattern`. */
export async function expectPattern(dev: Readable, offset: number, length: number, pattern: number, what = ''): Promise<void> {
  const buf = Buffer.alloc(length, other(pattern));
  await dev.read(offset, buf);
  assertAll(buf, pattern, `${what} [${offset}, ${offset + length})`);
}

/** Reads and compares with an exact buffer. */
export async function expectBytes(dev: Readable, offset: number, expected: Buffer, what = ''): Promise<void> {
  const buf = Buffer.alloc(expected.length, other(expected[0] ?? 0));
  await dev.read(offset, buf);
  if (!buf.equals(expected)) {
    let i = 0;
    while (buf[i] === expected[i]) i++;
    assert.fail(`${what}: byte ${offset + i} is 0x${buf[i]!.toString(16)}, expected 0x${expected[i]!.toString(16)}`);
  }
}

const CHUNK = 1 << 20;
const patternChunks = new Map<number, Buffer>();

/** Asserts every byte of `buf` is `pattern` (compared a MiB at a time; located only on mismatch). */
export function assertAll(buf: Buffer, pattern: number, what: string): void {
  let ref = patternChunks.get(pattern);
  if (!ref) {
    ref = Buffer.alloc(CHUNK, pattern);
    patternChunks.set(pattern, ref);
  }
  for (let off = 0; off < buf.length; off += CHUNK) {
    const n = Math.min(CHUNK, buf.length - off);
    if (buf.subarray(off, off + n).equals(n === CHUNK ? ref : ref.subarray(0, n))) continue;
    const i = off + buf.subarray(off, off + n).findIndex((b) => b !== pattern);
    assert.fail(`${what}: byte at +${i} is 0x${buf[i]!.toString(16)}, expected 0x${pattern.toString(16)}`);
  }
}

export async function expectReadFails(dev: Readable, offset: number, length: number, code = 'EIO'): Promise<void> {
  await assert.rejects(dev.read(offset, Buffer.alloc(length)), (e: unknown) => (e as { code?: string }).code === code);
}

export function fill(length: number, byte: number): Buffer {
  return Buffer.alloc(length, byte);
}

/** The fault node a fixture put on the secondary disk. */
export function localFault(f: SecondaryFixture): FaultNode {
  assert.ok(f.local instanceof FaultNode, 'fixture was made without faultyLocal');
  return f.local;
}

/** Polls a real condition (no event exists for it) with a bound. */
export async function until(cond: () => boolean, what: string, maxTurns = 20000): Promise<void> {
  for (let i = 0; i < maxTurns; i++) {
    if (cond()) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  assert.fail(`timed out waiting for ${what}`);
}
