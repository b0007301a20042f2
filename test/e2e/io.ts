/**
 * Guest-like I/O for the robustness tests, from this process over NBD:
 * writes that are acknowledged but never flushed (the daemon's shutdown
 * must make them durable), and a stream of writes still in flight when the
 * daemon is told to stop, recording which ones it acknowledged.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { NbdClient } from '../../src/nbd/client.js';
import { runOk } from '../helpers/env.js';
import { KiB } from './model.js';
import type { NbdAddress } from './pair.js';

export async function connect(addr: NbdAddress | string, exportName: string): Promise<NbdClient> {
  const a = typeof addr === 'string' ? { path: addr } : addr;
  return NbdClient.connect('path' in a ? { type: 'unix', path: a.path } : { type: 'inet', host: a.host, port: a.port }, { exportName });
}

export const SLOT = 64 * KiB;

/** The byte a slot's write fills it with (never zero, differs from its neighbours). */
export function slotPattern(slot: number, salt: number): number {
  return 1 + ((slot * 7 + salt) % 254);
}

/**
 * Writes slots `first..first+count-1` (one write each, no flush) at a queue
 * depth of 8, calls `onAcked(n)` after each acknowledgement, and goes on
 * until every slot was sent or the connection fails (the daemon stopped).
 * Resolves with the slots the daemon acknowledged.
 */
export async function writeStream(client: NbdClient, first: number, count: number, salt: number, onAcked: (n: number) => void): Promise<number[]> {
  const acked: number[] = [];
  let next = first;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < first + count) {
      const slot = next++;
      try {
        await client.write(slot * SLOT, Buffer.alloc(SLOT, slotPattern(slot, salt)));
      } catch {
        failed = true;
        return;
      }
      acked.push(slot);
      onAcked(acked.length);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  return acked.sort((a, b) => a - b);
}

/** `qemu-io read -P` commands for acknowledged slots. */
export function slotReads(slots: readonly number[], salt: number): string[] {
  return slots.map((s) => `read -P ${slotPattern(s, salt)} ${s * SLOT} ${SLOT}`);
}

/** A `json:` image name for an overlay chain read offline (the overlays' headers name no backing file). */
export function chainSpec(active: string, hidden: string, disk: string, diskFormat: 'raw' | 'qcow2'): string {
  const file = (filename: string): Record<string, string> => ({ driver: 'file', filename });
  return `json:${JSON.stringify({
    driver: 'qcow2', file: file(active),
    backing: { driver: 'qcow2', file: file(hidden), backing: { driver: diskFormat, file: file(disk) } },
  })}`;
}

/** A qcow2 image with the given content (through a raw scratch file). */
export async function qcow2With(path: string, content: Buffer, scratch: string): Promise<string> {
  writeFileSync(scratch, content);
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', scratch, path]);
  rmSync(scratch);
  return path;
}

export interface LoadOptions {
  seed: number;
  /** Bytes of the disk the writes may touch, from offset 0. */
  size: number;
  depth: number;
  /** Checked before each new write; true ends the load. */
  stop: () => boolean;
  /** Called when the daemon acknowledges a write. */
  onAck?: (offset: number, data: Buffer) => void;
}

/**
 * Random writes (512-byte aligned, 512 B to 64 KiB, random patterns) at a
 * queue depth, never two in flight over the same 64 KiB slot, so the order
 * in which overlapping writes land is the order they were acknowledged in.
 * Ends when `stop()` says so or a write fails (the daemon died).
 */
export async function randomLoad(client: NbdClient, opts: LoadOptions): Promise<{ acked: number; failed: boolean }> {
  let x = opts.seed >>> 0 || 1;
  const rand = (n: number): number => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x % n;
  };
  const slots = Math.floor(opts.size / SLOT);
  const busy = new Set<number>();
  let acked = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && !opts.stop()) {
      let slot = rand(slots);
      while (busy.has(slot)) slot = rand(slots);
      const sectors = SLOT / 512;
      const first = rand(sectors);
      const offset = slot * SLOT + first * 512;
      const data = Buffer.alloc((1 + rand(sectors - first)) * 512, 1 + rand(255));
      busy.add(slot);
      try {
        await client.write(offset, data);
        acked++;
        opts.onAck?.(offset, data);
      } catch {
        failed = true;
      } finally {
        busy.delete(slot);
      }
    }
  };
  await Promise.all(Array.from({ length: opts.depth }, worker));
  return { acked, failed };
}
