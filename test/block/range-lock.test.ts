import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { RangeLock, type RangeLockGuard } from '../../src/block/range-lock.js';

test('non-overlapping exclusive ranges are granted at once', () => {
  const lock = new RangeLock();
  const a = lock.tryAcquire(0, 10)!;
  const b = lock.tryAcquire(10, 20)!;
  assert.ok(a && b);
  assert.equal(lock.held, 2);
  a.release();
  b.release();
  assert.equal(lock.held, 0);
});

test('shared holders overlap; exclusive waits for them', async () => {
  const lock = new RangeLock();
  const r1 = lock.tryAcquire(0, 100, 'shared')!;
  const r2 = lock.tryAcquire(50, 150, 'shared')!;
  assert.ok(r1 && r2);
  let granted = false;
  const w = lock.acquire(90, 95, 'exclusive').then((g) => { granted = true; return g; });
  await Promise.resolve();
  assert.equal(granted, false);
  r1.release();
  await Promise.resolve();
  assert.equal(granted, false, 'still overlaps r2');
  r2.release();
  const g = await w;
  assert.equal(granted, true);
  g.release();
});

test('a later reader does not overtake a waiting writer on the same range', async () => {
  const lock = new RangeLock();
  const order: string[] = [];
  const r1 = lock.tryAcquire(0, 10, 'shared')!;
  const writer = lock.acquire(0, 10, 'exclusive').then((g) => { order.push('writer'); g.release(); });
  assert.equal(lock.tryAcquire(0, 10, 'shared'), null, 'tryAcquire must queue behind the writer');
  const reader = lock.acquire(0, 10, 'shared').then((g) => { order.push('reader'); g.release(); });
  r1.release();
  await Promise.all([writer, reader]);
  assert.deepEqual(order, ['writer', 'reader']);
});

test('racing writers on one range run one at a time, in arrival order', async () => {
  const lock = new RangeLock();
  let inside = 0;
  let maxInside = 0;
  const order: number[] = [];
  await Promise.all(Array.from({ length: 20 }, async (_, i) => {
    const g = await lock.acquire(i % 3, 5 + (i % 4), 'exclusive');
    inside++;
    maxInside = Math.max(maxInside, inside);
    order.push(i);
    await new Promise<void>((r) => setImmediate(r));
    inside--;
    g.release();
  }));
  assert.equal(maxInside, 1);
  assert.deepEqual(order, Array.from({ length: 20 }, (_, i) => i));
});

test('releasing twice is a bug and throws', () => {
  const lock = new RangeLock();
  const g = lock.tryAcquire(0, 1)!;
  g.release();
  assert.throws(() => g.release(), /released twice/);
});

/**
 * The model: every entry in one arrival-ordered list; a waiter is granted
 * when no entry before it, granted or waiting, conflicts with it.
 */
class ModelLock {
  entries: Array<{ id: number; start: number; end: number; exclusive: boolean; granted: boolean }> = [];
  add(id: number, start: number, end: number, exclusive: boolean): void {
    this.entries.push({ id, start, end, exclusive, granted: false });
    this.settle();
  }
  release(id: number): void {
    this.entries = this.entries.filter((e) => e.id !== id);
    this.settle();
  }
  granted(): number[] {
    return this.entries.filter((e) => e.granted).map((e) => e.id).sort((a, b) => a - b);
  }
  private settle(): void {
    this.entries.forEach((e, i) => {
      if (e.granted) return;
      const blocked = this.entries.slice(0, i).some((o) => o.start < e.end && e.start < o.end && (o.exclusive || e.exclusive));
      if (!blocked) e.granted = true;
    });
  }
}

test('property: grants follow the arrival-order model through any mix of acquires and releases', async () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('acquire' as const), start: fc.integer({ min: 0, max: 30 }), len: fc.integer({ min: 1, max: 8 }), exclusive: fc.boolean() }),
    fc.record({ kind: fc.constant('release' as const), pick: fc.nat() }),
  );
  await fc.assert(fc.asyncProperty(fc.array(op, { maxLength: 60 }), async (ops) => {
    const lock = new RangeLock();
    const model = new ModelLock();
    const guards = new Map<number, RangeLockGuard>();
    const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
    let next = 0;
    for (const o of ops) {
      if (o.kind === 'acquire') {
        const id = next++;
        model.add(id, o.start, o.start + o.len, o.exclusive);
        void lock.acquire(o.start, o.start + o.len, o.exclusive ? 'exclusive' : 'shared').then((g) => { guards.set(id, g); });
      } else {
        const held = [...guards.keys()].sort((a, b) => a - b);
        if (held.length === 0) continue;
        const id = held[o.pick % held.length]!;
        guards.get(id)!.release();
        guards.delete(id);
        model.release(id);
      }
      await settle();
      assert.deepEqual([...guards.keys()].sort((a, b) => a - b), model.granted());
      assert.equal(lock.held, guards.size);
    }
    for (const g of guards.values()) g.release();
  }), { numRuns: 200 });
});
