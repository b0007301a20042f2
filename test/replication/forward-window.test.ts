/**
 * The primary's forwarding window on its own, with a scripted secondary:
 * when the writer is answered, what waits for what, and (property) that
 * the secondary ends equal to the writer's sequence whatever order it
 * answers in.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { ForwardWindow } from '../../src/replication/forward-window.js';

/** A secondary that holds every write until the test answers it. */
class ScriptedSecondary {
  readonly sent: Array<{ offset: number; data: Buffer; released: () => void; answer: () => void }> = [];
  readonly disk: Buffer;

  constructor(size: number) {
    this.disk = Buffer.alloc(size);
  }

  send(offset: number, data: Buffer): (released: () => void) => Promise<void> {
    return (released) => new Promise<void>((resolve) => {
      const copy = Buffer.from(data);
      this.sent.push({
        offset,
        data: copy,
        released,
        answer: () => {
          copy.copy(this.disk, offset);
          resolve();
        },
      });
    });
  }

  answer(i: number): void {
    const [w] = this.sent.splice(i, 1);
    w!.answer();
  }
}

/** Settles pending promise callbacks (no timers involved). */
async function ticks(n = 10): Promise<void> {
  for (let i = 0; i < n; i++) await Promise.resolve();
}

function tracked(p: Promise<void>): { done: () => boolean; p: Promise<void> } {
  let done = false;
  const q = p.then(() => { done = true; });
  return { done: () => done, p: q };
}

test('the writer is answered once the payload is released, before the secondary answers', async () => {
  const w = new ForwardWindow({ maxBytes: 1 << 20, maxRequests: 8 });
  const sec = new ScriptedSecondary(4096);
  const a = tracked(w.submit(0, 512, sec.send(0, Buffer.alloc(512, 1))));
  await ticks();
  assert.equal(a.done(), false, 'not before the payload is released');
  sec.sent[0]!.released();
  await a.p;
  assert.equal(w.requestsOutstanding, 1);
  assert.equal(w.bytesOutstanding, 512);
  const settled = tracked(w.settled());
  await ticks();
  assert.equal(settled.done(), false, 'settled waits for the answer');
  sec.answer(0);
  await settled.p;
  assert.equal(w.requestsOutstanding, 0);
  assert.equal(w.bytesOutstanding, 0);
});

test('an overlapping write is not sent before the earlier one is answered; others pass', async () => {
  const w = new ForwardWindow({ maxBytes: 1 << 20, maxRequests: 8 });
  const sec = new ScriptedSecondary(8192);
  const first = w.submit(0, 1024, sec.send(0, Buffer.alloc(1024, 1)));
  await ticks();
  sec.sent[0]!.released();
  await first;
  const overlapping = tracked(w.submit(512, 1024, sec.send(512, Buffer.alloc(1024, 2))));
  const apart = w.submit(4096, 512, sec.send(4096, Buffer.alloc(512, 3)));
  await ticks();
  assert.equal(sec.sent.length, 2, 'the write elsewhere went out');
  assert.equal(sec.sent[1]!.offset, 4096);
  sec.sent[1]!.released();
  await apart;
  assert.equal(overlapping.done(), false);
  sec.answer(0);
  await ticks();
  assert.equal(sec.sent.length, 2);
  assert.equal(sec.sent[1]!.offset, 512, 'sent once the overlapped write was answered');
  sec.sent[1]!.released();
  await overlapping.p;
});

test('the window bounds requests and bytes outstanding; a full window makes the writer wait', async () => {
  const w = new ForwardWindow({ maxBytes: 3000, maxRequests: 2 });
  const sec = new ScriptedSecondary(1 << 16);
  const a = w.submit(0, 1000, sec.send(0, Buffer.alloc(1000, 1)));
  const b = w.submit(2000, 1000, sec.send(2000, Buffer.alloc(1000, 2)));
  await ticks();
  sec.sent[0]!.released();
  sec.sent[1]!.released();
  await Promise.all([a, b]);
  const c = tracked(w.submit(4000, 1000, sec.send(4000, Buffer.alloc(1000, 3))));
  await ticks();
  assert.equal(sec.sent.length, 2, 'two requests outstanding: the third waits');
  sec.answer(0);
  await ticks();
  assert.equal(sec.sent.length, 2, 'the third is out');
  sec.sent[1]!.released();
  await c.p;
  const big = tracked(w.submit(8000, 2500, sec.send(8000, Buffer.alloc(2500, 4))));
  await ticks();
  assert.equal(big.done(), false, '2000 + 2500 bytes exceed the window');
  assert.equal(sec.sent.length, 2);
  sec.answer(0);
  await ticks();
  assert.equal(sec.sent.length, 1, '1000 + 2500 still exceed it');
  sec.answer(0);
  await ticks();
  assert.equal(sec.sent.length, 1, 'room for it now');
  sec.sent[0]!.released();
  await big.p;
  assert.ok(w.bytesOutstanding <= 3000);
});

test('a write larger than the whole window still goes out alone', async () => {
  const w = new ForwardWindow({ maxBytes: 100, maxRequests: 4 });
  const sec = new ScriptedSecondary(1000);
  const p = w.submit(0, 500, sec.send(0, Buffer.alloc(500, 1)));
  await ticks();
  sec.sent[0]!.released();
  await p;
});

test('window 0: every write waits for the answer (QEMU\'s behaviour)', async () => {
  const w = new ForwardWindow({ maxBytes: 0, maxRequests: 8 });
  const sec = new ScriptedSecondary(1000);
  const p = tracked(w.submit(0, 100, sec.send(0, Buffer.alloc(100, 1))));
  await ticks();
  sec.sent[0]!.released();
  await ticks();
  assert.equal(p.done(), false);
  sec.answer(0);
  await p.p;
});

test('settled covers the writes answered before it was called, not later ones', async () => {
  const w = new ForwardWindow({ maxBytes: 1 << 20, maxRequests: 8 });
  const sec = new ScriptedSecondary(4096);
  const a = w.submit(0, 100, sec.send(0, Buffer.alloc(100, 1)));
  await ticks();
  sec.sent[0]!.released();
  await a;
  const settled = tracked(w.settled());
  const b = w.submit(1000, 100, sec.send(1000, Buffer.alloc(100, 2)));
  await ticks();
  sec.sent[1]!.released();
  await b;
  sec.answer(0);
  await settled.p;
  assert.equal(w.requestsOutstanding, 1, 'the later write is still out');
});

test('property: whatever order the secondary answers in, it ends equal to the writer\'s sequence, within the window\'s bounds', async () => {
  const SIZE = 4096;
  const writeArb = fc.record({
    offset: fc.integer({ min: 0, max: SIZE - 1 }),
    length: fc.integer({ min: 1, max: 1024 }),
    fill: fc.integer({ min: 1, max: 255 }),
    // How many writes the writer issues before awaiting them (a guest's queue depth).
    batch: fc.integer({ min: 1, max: 4 }),
  });
  await fc.assert(fc.asyncProperty(
    fc.array(writeArb, { minLength: 1, maxLength: 30 }),
    fc.array(fc.nat(), { minLength: 1, maxLength: 64 }),
    fc.integer({ min: 1, max: 6 }),
    async (writes, choices, maxRequests) => {
      const w = new ForwardWindow({ maxBytes: 3000, maxRequests });
      const sec = new ScriptedSecondary(SIZE);
      const model = Buffer.alloc(SIZE);
      let pick = 0;
      // The secondary releases payloads at once and answers in a scripted, shuffled order.
      let stop = false;
      const secondaryLoop = (async () => {
        while (!stop || sec.sent.length > 0) {
          await ticks(3);
          assert.ok(w.bytesOutstanding <= 3000, `window bound kept (${w.bytesOutstanding} bytes out)`);
          assert.ok(w.requestsOutstanding <= maxRequests);
          for (const s of sec.sent) s.released();
          if (sec.sent.length > 0) sec.answer(choices[pick++ % choices.length]! % sec.sent.length);
        }
      })();
      for (let i = 0; i < writes.length;) {
        const n = writes[i]!.batch;
        const group = writes.slice(i, i + n);
        i += n;
        // Writes issued together must not overlap (as a guest's concurrent writes); overlaps go in the next group.
        const issued: Array<Promise<void>> = [];
        const taken: Array<[number, number]> = [];
        for (const g of group) {
          const len = Math.min(g.length, SIZE - g.offset);
          if (taken.some(([a, b]) => g.offset < b && a < g.offset + len)) continue;
          taken.push([g.offset, g.offset + len]);
          const data = Buffer.alloc(len, g.fill);
          data.copy(model, g.offset);
          issued.push(w.submit(g.offset, len, sec.send(g.offset, data)));
        }
        await Promise.all(issued);
      }
      await w.settled();
      stop = true;
      await secondaryLoop;
      assert.ok(sec.disk.equals(model));
    },
  ), { numRuns: 200 });
});
