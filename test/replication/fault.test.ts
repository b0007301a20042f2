/**
 * The fault-injecting filter: matching by operation and range, counts,
 * errors, holds, delays, open-time rules, and run-time switching.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FaultNode } from '../../src/drivers/fault.js';
import { createGraph } from '../../src/drivers/index.js';
import { MiB, expectPattern, fill } from './fixtures.js';

async function faulty(rules?: unknown): Promise<{ g: ReturnType<typeof createGraph>; f: FaultNode }> {
  const g = createGraph();
  await g.add({ driver: 'memory', 'node-name': 'm', size: MiB });
  const opts: Record<string, unknown> = { driver: 'fault', 'node-name': 'f', file: 'm' };
  if (rules !== undefined) opts.rules = rules;
  const f = await g.add(opts as never);
  assert.ok(f instanceof FaultNode);
  return { g, f };
}

test('without rules it is a transparent filter', async () => {
  const { g, f } = await faulty();
  assert.equal(f.isFilter, true);
  assert.equal(f.size, MiB);
  await f.write(100, fill(1000, 3));
  await f.writeZeroes(200, 10);
  await expectPattern(g.get('m'), 100, 100, 3);
  await expectPattern(f, 200, 10, 0);
  await f.flush();
  await g.closeAll();
});

test('rules match operation and overlapping range, for `count` matches', async () => {
  const { g, f } = await faulty();
  const r = f.addRule({ op: ['write', 'discard'], offset: 4096, length: 4096, errno: 'ENOSPC', count: 2 });
  await f.write(0, fill(4096, 1)); // ends where the range begins: no match
  await f.read(4096, Buffer.alloc(10)); // not a matching operation
  await assert.rejects(f.write(8191, fill(2, 1)), { code: 'ENOSPC' });
  await assert.rejects(f.discard(0, MiB), { code: 'ENOSPC' });
  await f.write(5000, fill(10, 2)); // the rule is spent
  assert.equal(r.hits, 2);
  assert.equal(r.exhausted, true);
  await expectPattern(f, 5000, 10, 2);
  await g.closeAll();
});

test('holds park requests until released; waitForHits says when they arrived', async () => {
  const { g, f } = await faulty();
  const hold = f.addRule({ op: 'write', hold: true });
  let done = 0;
  const writes = [f.write(0, fill(10, 1)), f.write(100, fill(10, 2))].map((p) => p.then(() => { done++; }));
  await hold.waitForHits(2);
  assert.equal(hold.parkedCount, 2);
  assert.equal(done, 0);
  hold.release();
  await Promise.all(writes);
  assert.equal(done, 2);
  // Still holding later requests until removed.
  const later = f.write(200, fill(10, 3));
  await hold.waitForHits(3);
  hold.remove();
  await later;
  await expectPattern(f, 200, 10, 3);
  await g.closeAll();
});

test('a delayed request still completes with the right data', async () => {
  const { g, f } = await faulty();
  await f.write(0, fill(10, 4));
  const rule = f.addRule({ op: 'read', delayMs: [1, 3] });
  await expectPattern(f, 0, 10, 4);
  assert.equal(rule.hits, 1);
  await g.closeAll();
});

test('flush and make-empty can fail; clearRules switches everything off', async () => {
  const g = createGraph();
  await g.add({ driver: 'memory', 'node-name': 'base', size: MiB });
  await g.add({ driver: 'memory', 'node-name': 'over', backing: 'base' });
  const f = await g.add({ driver: 'fault', 'node-name': 'f', file: 'over' }) as FaultNode;
  f.addRule({ op: 'flush', errno: 'EIO' });
  f.addRule({ op: 'make-empty', errno: 'EROFS' });
  await assert.rejects(f.flush(), { code: 'EIO' });
  await assert.rejects(f.makeEmpty(), { code: 'EROFS' });
  f.clearRules();
  assert.equal(f.rules.length, 0);
  await f.write(0, fill(10, 9));
  await f.makeEmpty();
  await expectPattern(f, 0, 10, 0, 'emptied through the filter');
  await g.closeAll();
});

test('rules at open, in JSON and keyval forms, with clear errors', async () => {
  const { g, f } = await faulty([{ op: 'write', offset: 0, length: 512, errno: 'EIO' }]);
  await assert.rejects(f.write(0, fill(1, 1)), { code: 'EIO' });
  await f.write(512, fill(1, 1));
  await g.closeAll();
  const { parseKeyVal } = await import('../../src/block/options.js');
  const g2 = createGraph();
  await g2.add({ driver: 'memory', 'node-name': 'm', size: MiB });
  const kv = parseKeyVal('driver=fault,node-name=f,file=m,rules.0.op=read,rules.0.errno=ENOMEDIUM,rules.0.count=1');
  const f2 = await g2.add(kv) as FaultNode;
  await assert.rejects(f2.read(0, Buffer.alloc(1)), { code: 'ENOMEDIUM' });
  await f2.read(0, Buffer.alloc(1));
  await assert.rejects(g2.add({ driver: 'fault', 'node-name': 'x', file: 'm', rules: [{ op: 'bogus' }] }),
    { message: "Parameter 'rules.0.op' expects one of read, write, write-zeroes, discard, flush, block-status, make-empty" });
  await assert.rejects(g2.add({ driver: 'fault', 'node-name': 'x', file: 'm', rules: [{ op: 'read', when: 1 }] }),
    { message: "Parameter 'rules.0.when' is unexpected" });
  await assert.rejects(g2.add({ driver: 'fault', 'node-name': 'x' }), { message: 'A block device must be specified for "file"' });
  await g2.closeAll();
});
