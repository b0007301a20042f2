/**
 * The deterministic workload of the crash test, shared by the child that
 * runs it and the parent that computes what must have survived.
 */
import { patternBuffer } from '../helpers/env.js';

export type CrashOp =
  | { kind: 'write'; off: number; len: number; seed: number; fua: boolean }
  | { kind: 'zero'; off: number; len: number; unmap: boolean }
  | { kind: 'discard'; off: number; len: number }
  | { kind: 'empty' };

function rng(seed: number): () => number {
  let x = (seed * 2654435761) >>> 0 || 1;
  return () => {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

export function batchOps(seed: number, batch: number, size: number): CrashOp[] {
  const rand = rng(seed * 7919 + batch);
  const ops: CrashOp[] = [];
  if (batch > 0 && rand() < 0.1) ops.push({ kind: 'empty' });
  const n = 8 + Math.floor(rand() * 24);
  for (let i = 0; i < n; i++) {
    const off = Math.floor(rand() * size);
    const len = Math.max(1, Math.min(size - off, Math.floor(rand() * 256 * 1024)));
    const r = rand();
    if (r < 0.7) ops.push({ kind: 'write', off, len, seed: seed * 100000 + batch * 100 + i, fua: rand() < 0.05 });
    else if (r < 0.85) ops.push({ kind: 'zero', off, len, unmap: rand() < 0.5 });
    else ops.push({ kind: 'discard', off, len });
  }
  return ops;
}

/** Applies a batch to the model; discards are left to `unknown` since their effect is advisory. */
export function applyToModel(model: Buffer, ops: CrashOp[], clusterSize: number): void {
  for (const op of ops) {
    if (op.kind === 'empty') model.fill(0);
    else if (op.kind === 'write') patternBuffer(op.len, op.seed).copy(model, op.off);
    else if (op.kind === 'zero') model.fill(0, op.off, op.off + op.len);
    else {
      const end = op.off + op.len;
      const first = Math.ceil(op.off / clusterSize);
      const last = end === model.length ? Math.ceil(end / clusterSize) : Math.floor(end / clusterSize);
      for (let c = first; c < last; c++) model.fill(0, c * clusterSize, Math.min((c + 1) * clusterSize, model.length));
    }
  }
}

/** Marks the bytes a batch may have changed (all of them for make-empty). */
export function markTouched(mask: Uint8Array, ops: CrashOp[]): void {
  for (const op of ops) {
    if (op.kind === 'empty') mask.fill(1);
    else mask.fill(1, op.off, op.off + op.len);
  }
}
