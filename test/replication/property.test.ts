/**
 * Property: random batches of concurrent operations against a model.
 *
 *   - primary writes (through the secondary disk's BlockBackend, as NBD
 *     delivers them), write-zeroes and discards;
 *   - writes, write-zeroes and reads of the secondary view;
 *   - checkpoints, and one failover, between batches.
 *
 * Model: the secondary disk always equals the primary model before failover;
 * the view equals the primary model at the last checkpoint plus the view's own
 * writes since; after failover the secondary disk equals that view. Inside a
 * batch, primary and view operations may overlap each other freely (that is
 * the concurrency that matters); operations of one side that overlap each
 * other are not batched together, since their order would be undefined.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { KiB, localFault, secondaryFixture } from './fixtures.js';

const SIZE = 1024 * KiB;

type Op =
  | { side: 'primary'; kind: 'write' | 'zero' | 'discard'; off: number; len: number; val: number }
  | { side: 'view'; kind: 'write' | 'zero' | 'read'; off: number; len: number; val: number };

type Step = { kind: 'batch'; ops: Op[] } | { kind: 'checkpoint' } | { kind: 'failover' };

const range = fc.tuple(fc.integer({ min: 0, max: SIZE - 1 }), fc.integer({ min: 1, max: 192 * KiB }))
  .map(([off, len]) => ({ off, len: Math.min(len, SIZE - off) }));

const opArb: fc.Arbitrary<Op> = fc.tuple(
  fc.constantFrom<'primary' | 'view'>('primary', 'view'),
  fc.constantFrom<'write' | 'zero' | 'discard' | 'read'>('write', 'write', 'zero', 'discard', 'read', 'read'),
  range,
  fc.integer({ min: 1, max: 255 }),
).map(([side, kind, r, val]): Op => {
  if (side === 'primary') return { side, kind: kind === 'read' ? 'write' : kind, ...r, val };
  return { side, kind: kind === 'discard' ? 'zero' : kind, ...r, val };
});

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.array(opArb, { minLength: 1, maxLength: 8 }).map((ops): Step => ({ kind: 'batch', ops })) },
  { weight: 2, arbitrary: fc.constant<Step>({ kind: 'checkpoint' }) },
  { weight: 1, arbitrary: fc.constant<Step>({ kind: 'failover' }) },
);

const overlaps = (a: { off: number; len: number }, b: { off: number; len: number }): boolean =>
  a.off < b.off + b.len && b.off < a.off + a.len;

/** Keeps ops whose order within the batch cannot matter. */
function schedulable(ops: Op[]): Op[] {
  const kept: Op[] = [];
  for (const op of ops) {
    const clash = kept.some((k) => k.side === op.side && overlaps(k, op) && (k.kind !== 'read' || op.kind !== 'read'));
    if (!clash) kept.push(op);
  }
  return kept;
}

test('the secondary view, the secondary disk and failover agree with the model', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(stepArb, { minLength: 1, maxLength: 12 }),
      fc.boolean(),
      fc.boolean(),
      async (steps, delays, lockless) => {
        const f = await secondaryFixture('memory', { size: SIZE, faultyLocal: true, locklessHidden: lockless });
        try {
          if (delays) localFault(f).addRule({ op: ['read', 'write', 'write-zeroes', 'discard'], delayMs: [0, 1] });
          await f.repl.start('secondary');
          const primary = Buffer.alloc(SIZE, 0x11);
          const view = Buffer.alloc(SIZE, 0x11);
          // Discard is advisory: a discarded byte reads as before or as zero. The
          // next check of the disk settles which, and the model follows.
          const discarded = new Uint8Array(SIZE);
          const beforeDiscard = Buffer.alloc(SIZE);
          let pendingDiscards: Array<{ off: number; len: number }> = [];
          let failedOver = false;

          const checkDisk = async (expected: Buffer, what: string): Promise<void> => {
            const got = Buffer.alloc(SIZE, 0xa5);
            await f.localBB.read(0, got);
            for (const d of pendingDiscards) {
              for (let k = d.off; k < d.off + d.len; k++) {
                if (!discarded[k]) continue;
                assert.ok(got[k] === beforeDiscard[k] || got[k] === 0, `${what}: discarded byte ${k} is ${got[k]}`);
                expected[k] = got[k]!;
                discarded[k] = 0;
              }
            }
            pendingDiscards = [];
            if (got.equals(expected)) return;
            const i = got.findIndex((b, k) => b !== expected[k]);
            assert.fail(`${what}: secondary disk byte ${i} is ${got[i]}, expected ${expected[i]}`);
          };
          const checkView = async (what: string): Promise<void> => {
            const got = Buffer.alloc(SIZE, 0xa5);
            await f.top.read(0, got);
            if (got.equals(view)) return;
            const i = got.findIndex((b, k) => b !== view[k]);
            assert.fail(`${what}: view byte ${i} is ${got[i]}, expected ${view[i]}`);
          };

          for (const step of steps) {
            if (step.kind === 'checkpoint') {
              if (failedOver) continue;
              await f.repl.checkpoint();
              primary.copy(view);
            } else if (step.kind === 'failover') {
              if (failedOver) continue;
              failedOver = true;
              await f.repl.stop(true);
            } else {
              const ops = schedulable(step.ops).filter((op) => !(failedOver && op.side === 'primary'));
              const running = ops.map((op) => {
                if (op.side === 'primary') {
                  if (op.kind === 'write') {
                    primary.fill(op.val, op.off, op.off + op.len);
                    discarded.fill(0, op.off, op.off + op.len);
                    return f.localBB.write(op.off, Buffer.alloc(op.len, op.val));
                  }
                  if (op.kind === 'zero') {
                    primary.fill(0, op.off, op.off + op.len);
                    discarded.fill(0, op.off, op.off + op.len);
                    return f.localBB.writeZeroes(op.off, op.len);
                  }
                  primary.copy(beforeDiscard, op.off, op.off, op.off + op.len);
                  discarded.fill(1, op.off, op.off + op.len);
                  pendingDiscards.push({ off: op.off, len: op.len });
                  return f.localBB.discard(op.off, op.len);
                }
                if (op.kind === 'read') {
                  const expected = Buffer.from(view.subarray(op.off, op.off + op.len));
                  const buf = Buffer.alloc(op.len, 0xa5);
                  return f.top.read(op.off, buf).then(() => {
                    if (buf.equals(expected)) return;
                    const i = buf.findIndex((b, k) => b !== expected[k]);
                    assert.fail(`view read at ${op.off}+${i}: ${buf[i]}, expected ${expected[i]}`);
                  });
                }
                if (op.kind === 'write') {
                  view.fill(op.val, op.off, op.off + op.len);
                  return f.top.write(op.off, Buffer.alloc(op.len, op.val));
                }
                view.fill(0, op.off, op.off + op.len);
                return f.top.writeZeroes(op.off, op.len);
              });
              await Promise.all(running);
            }
            if (!failedOver) await checkDisk(primary, 'before failover');
            await checkView(step.kind);
          }
          if (failedOver) {
            await f.repl.failoverSettled();
            assert.equal(f.repl.stage, 'done');
            await checkDisk(view, 'after failover');
            await checkView('after failover');
          }
        } finally {
          await f.cleanup();
        }
      },
    ),
    { numRuns: 100 },
  );
});
