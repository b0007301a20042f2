/**
 * One script for every pair (QEMU or colo-blk on either side): writes
 * through the primary's export and the secondary's view, checkpoints, more
 * writes, the primary killed with SIGKILL, the secondary's failover, writes
 * after it. At each `check` the primary's export, the replication target and
 * the view are read whole and compared with the byte model; the snapshots
 * are returned so the test can hold them against QEMU-with-QEMU's.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { checkpointPair, failoverSecondary } from '../../src/control/colo-ops.js';
import { MiB, PairModel, firstDifference, qemuIo, qemuIoCommand, readAll, type WriteKind } from './model.js';
import { killSide, type Primary, type Secondary } from './pair.js';

export type Step =
  | { on: 'primary' | 'view'; kind: WriteKind; offset: number; length: number; pattern?: number }
  | { on: 'checkpoint' }
  | { on: 'check'; label: string }
  | { on: 'kill-primary' }
  | { on: 'failover' };

export const SIZE = 16 * MiB;
const K = 1024;
const M = MiB;

const p = (kind: WriteKind, offset: number, length: number, pattern = 0): Step => ({ on: 'primary', kind, offset, length, pattern });
const v = (kind: WriteKind, offset: number, length: number, pattern = 0): Step => ({ on: 'view', kind, offset, length, pattern });
const check = (label: string): Step => ({ on: 'check', label });

export const SCRIPT: readonly Step[] = [
  // Interval 1: unaligned and cluster-straddling requests, a primary write over the view's, zeroes.
  // Primary writes stay 512-byte aligned: QEMU's primary corrupts unaligned ones (see pairs.test.ts).
  p('write', 0, 4 * M, 0x11),
  p('write', 3 * M + 512, 512, 0x13),
  v('write', 8 * M, M, 0x22),
  v('write', 5 * M + 100, 70_000, 0x24),
  p('write', 8 * M + 512 * K, 64 * K, 0x15),
  p('zero', 10 * M, 192 * K),
  check('interval 1'),
  { on: 'checkpoint' },
  check('after checkpoint 1'),
  // Interval 2: the view writes where the primary just wrote and the other way round; a discard (a no-op).
  p('write', 12 * M, 2 * M, 0x33),
  p('write', 0, M, 0x44),
  v('write', 12 * M + 4096, 8192, 0x55),
  v('write', 6 * M, 64 * K, 0x66),
  p('write', 6 * M + 32 * K, 64 * K, 0x77),
  v('zero', 9 * M, 128 * K),
  p('discard', M, 64 * K),
  v('write', 15 * M + 512, M - 512 - 1, 0x78),
  p('fua', 11 * M, 128 * K, 0x79),
  p('zero-unmap', 13 * M, 256 * K),
  v('fua', 11 * M + 64 * K, 100, 0x7a),
  v('zero-unmap', 3 * M, 64 * K + 512),
  v('discard', 4 * M, 64 * K),
  check('interval 2'),
  { on: 'checkpoint' },
  // Interval 3: rolled back by the failover (the hidden disk is committed too).
  p('write', 2 * M, 256 * K, 0x88),
  p('write', SIZE - 4096, 4096, 0x89),
  v('write', 7 * M + 1, 3, 0x99),
  check('interval 3'),
  { on: 'kill-primary' },
  { on: 'failover' },
  check('after failover'),
  v('write', 4 * M, 128 * K, 0xaa),
  v('write', 8 * M - 1, 2, 0xab),
  check('end'),
];

/** What the pair showed at each check: the primary's export, the replication target, the view. */
export type Snapshots = Map<string, { primary?: Buffer; parent?: Buffer; view: Buffer }>;

export interface ScriptResult {
  snapshots: Snapshots;
  model: PairModel;
  failover: { stage: string; commandMs: number; doneMs: number };
}

/** Runs the script; consecutive writes on one side go in one qemu-io run. */
export async function runScript(primary: Primary, secondary: Secondary, base: Buffer, scratchDir: string, tag: string): Promise<ScriptResult> {
  const model = new PairModel(base);
  const snapshots: Snapshots = new Map();
  let failover: ScriptResult['failover'] | undefined;
  let primaryAlive = true;
  const scratch = (name: string): string => join(scratchDir, `${tag}-${name}.raw`);
  for (let i = 0; i < SCRIPT.length;) {
    const step = SCRIPT[i]!;
    if (step.on === 'primary' || step.on === 'view') {
      const batch: string[] = [];
      for (; i < SCRIPT.length; i++) {
        const s = SCRIPT[i]!;
        if (s.on !== step.on) break;
        batch.push(qemuIoCommand(s.kind, s.offset, s.length, s.pattern!));
        if (s.on === 'primary') model.primaryWrite(s.kind, s.offset, s.length, s.pattern!);
        else model.viewWrite(s.kind, s.offset, s.length, s.pattern!);
      }
      await qemuIo(step.on === 'primary' ? primary.guestUri : secondary.viewUri, 'raw', batch);
      continue;
    }
    i++;
    switch (step.on) {
      case 'checkpoint':
        await checkpointPair(secondary.qmp, primary.qmp);
        model.checkpoint();
        break;
      case 'kill-primary':
        await killSide(primary);
        primaryAlive = false;
        break;
      case 'failover': {
        const r = await failoverSecondary(secondary.qmp);
        assert.equal(r.stage, 'done', `${tag}: failover ended in ${r.stage}: ${r.error ?? ''}`);
        failover = { stage: r.stage, commandMs: r.commandMs, doneMs: r.doneMs };
        model.failover();
        break;
      }
      case 'check': {
        const shot: { primary?: Buffer; parent?: Buffer; view: Buffer } = { view: await readAll(secondary.viewUri, 'raw', scratch('view')) };
        assert.ok(shot.view.equals(model.view), `${tag}, ${step.label}: the secondary's view: ${firstDifference(shot.view, model.view)}`);
        if (primaryAlive) {
          shot.primary = await readAll(primary.guestUri, 'raw', scratch('pvm'));
          assert.ok(shot.primary.equals(model.primary), `${tag}, ${step.label}: the primary's disk: ${firstDifference(shot.primary, model.primary)}`);
        }
        if (!model.failedOver) {
          shot.parent = await readAll(secondary.parentUri, 'raw', scratch('parent'));
          assert.ok(shot.parent.equals(model.primary), `${tag}, ${step.label}: the secondary disk (replication target): ${firstDifference(shot.parent, model.primary)}`);
        }
        snapshots.set(step.label, shot);
        break;
      }
    }
  }
  if (!failover) throw new Error('the script has no failover');
  return { snapshots, model, failover };
}
