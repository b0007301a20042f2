/**
 * The quorum driver: open-time errors, threshold arithmetic, fifo fallback,
 * voting reads, QUORUM_REPORT_BAD / QUORUM_FAILURE, and x-blockdev-change's
 * add/remove semantics with QEMU's messages and child naming.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BlockBackend } from '../../src/block/backend.js';
import type { BlockGraph } from '../../src/block/graph.js';
import { Status } from '../../src/block/node.js';
import type { FaultNode } from '../../src/drivers/fault.js';
import { createGraph } from '../../src/drivers/index.js';
import { isChildManager } from '../../src/control/child-manager.js';
import { QuorumNode } from '../../src/drivers/quorum.js';
import type { QuorumFailure, QuorumReportBad } from '../../src/replication/events.js';
import { replicationRegistry } from '../../src/replication/registry.js';
import { MiB, expectPattern, fill, until } from './fixtures.js';

const SIZE = MiB;

async function quorumOf(n: number, opts: Record<string, unknown> = {}): Promise<{
  g: BlockGraph; q: QuorumNode; faults: FaultNode[]; bad: QuorumReportBad[]; failures: QuorumFailure[];
}> {
  const g = createGraph();
  const faults: FaultNode[] = [];
  for (let i = 0; i < n; i++) {
    await g.add({ driver: 'memory', 'node-name': `d${i}`, size: SIZE });
    faults.push(await g.add({ driver: 'fault', 'node-name': `f${i}`, file: `d${i}` }) as FaultNode);
  }
  const q = await g.add({
    driver: 'quorum', 'node-name': 'q', children: faults.map((f) => f.nodeName), 'vote-threshold': n, ...opts,
  } as never) as QuorumNode;
  const bad: QuorumReportBad[] = [];
  const failures: QuorumFailure[] = [];
  replicationRegistry(g).events.on('quorum-report-bad', (e) => bad.push(e));
  replicationRegistry(g).events.on('quorum-failure', (e) => failures.push(e));
  return { g, q, faults, bad, failures };
}

describe('quorum: open', () => {
  test("QEMU's open-time errors", async () => {
    const g = createGraph();
    await g.add({ driver: 'memory', 'node-name': 'a', size: SIZE });
    await g.add({ driver: 'memory', 'node-name': 'b', size: SIZE });
    await g.add({ driver: 'memory', 'node-name': 'small', size: SIZE / 2 });
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ 'vote-threshold': 1 }, 'Number of provided children must be 1 or more'],
      [{ children: [], 'vote-threshold': 1 }, 'Number of provided children must be 1 or more'],
      [{ children: { x: 'a' }, 'vote-threshold': 1 }, 'Option children is not a valid array'],
      [{ children: ['a'] }, "Parameter 'vote-threshold' expects a value >= 1"],
      [{ children: ['a'], 'vote-threshold': 0 }, "Parameter 'vote-threshold' expects a value >= 1"],
      [{ children: ['a'], 'vote-threshold': -3 }, "Parameter 'vote-threshold' expects a value >= 1"],
      [{ children: ['a'], 'vote-threshold': 2 }, 'threshold may not exceed children count'],
      [{ children: ['a'], 'vote-threshold': 1, 'read-pattern': 'random' }, 'Please set read-pattern as fifo or quorum'],
      [{ children: ['a'], 'vote-threshold': 1, blkverify: true }, 'blkverify=on can only be set if there are exactly two files and vote-threshold is 2'],
      [{ children: ['a', 'b'], 'vote-threshold': 2, blkverify: true, 'rewrite-corrupted': true }, 'rewrite-corrupted=on cannot be used with blkverify=on'],
      [{ children: ['a', 'b'], 'vote-threshold': 2, blkverify: true }, 'blkverify=on is not supported by colo-blk'],
      [{ children: ['a', 'small'], 'vote-threshold': 1 }, 'Could not refresh total sector count: Input/output error'],
      [{ children: ['a'], 'vote-threshold': 1, bogus: 1 }, "Block format 'quorum' does not support the option 'bogus'"],
      [{ children: ['nosuch'], 'vote-threshold': 1 }, "Cannot find device='nosuch' nor node-name='nosuch'"],
    ];
    for (const [opts, message] of cases) {
      await assert.rejects(g.add({ driver: 'quorum', 'node-name': 'q', ...opts } as never), { message }, JSON.stringify(opts));
      assert.equal(g.lookup('q'), undefined);
    }
    // fifo ignores blkverify, as QEMU only reads it for read-pattern=quorum.
    await g.add({ driver: 'quorum', 'node-name': 'q', children: ['a'], 'vote-threshold': '1', 'read-pattern': 'fifo', blkverify: 'on' });
    await g.closeAll();
  });

  test('children given inline are opened and closed with the quorum', async () => {
    const g = createGraph();
    const q = await g.add({
      driver: 'quorum', 'node-name': 'q', 'vote-threshold': 1,
      children: [{ driver: 'memory', 'node-name': 'inline0', size: SIZE }, { driver: 'memory', size: SIZE }],
    }) as QuorumNode;
    assert.deepEqual(q.childNames, ['children.0', 'children.1']);
    assert.equal(q.size, SIZE);
    assert.equal(q.readPattern, 'quorum', 'the default read pattern is quorum');
    const inline = g.get('inline0');
    await g.delete('q');
    assert.ok(inline.isClosed);
    await g.closeAll();
  });
});

describe('quorum: I/O', () => {
  test('writes succeed with vote-threshold successes; below it the most common error wins', async () => {
    const { g, q, faults, bad, failures } = await quorumOf(3, { 'vote-threshold': 2 });
    await q.write(512, fill(1024, 7));
    assert.deepEqual(bad, []);
    faults[1]!.addRule({ op: 'write', errno: 'ENOSPC', count: 1 });
    await q.write(512, fill(1024, 8));
    assert.deepEqual(bad, [{ type: 'write', error: 'No space left on device', 'node-name': 'f1', 'sector-num': 1, 'sectors-count': 2 }]);
    assert.deepEqual(failures, []);
    faults[0]!.addRule({ op: 'write', errno: 'EIO', count: 1 });
    faults[1]!.addRule({ op: 'write', errno: 'ENOSPC', count: 1 });
    faults[2]!.addRule({ op: 'write', errno: 'ENOSPC', count: 1 });
    await assert.rejects(q.write(0, fill(512, 9)), { code: 'ENOSPC' });
    assert.deepEqual(failures, [{ reference: 'q', 'sector-num': 0, 'sectors-count': 1 }]);
    await g.closeAll();
  });

  test('write-zeroes goes to every child; discard does nothing (QEMU has no quorum discard)', async () => {
    const { g, q } = await quorumOf(2, { 'vote-threshold': 1 });
    await q.write(0, fill(SIZE, 5));
    await q.writeZeroes(4096, 4096);
    await q.discard(0, SIZE);
    for (const d of ['d0', 'd1']) {
      await expectPattern(g.get(d), 4096, 4096, 0);
      await expectPattern(g.get(d), 0, 4096, 5, 'discard kept the data');
    }
    await g.closeAll();
  });

  test('fifo reads the first child that answers without error', async () => {
    const { g, q, faults, bad } = await quorumOf(3, { 'vote-threshold': 1, 'read-pattern': 'fifo' });
    await g.get('d0').write(0, fill(4096, 0xa0));
    await g.get('d1').write(0, fill(4096, 0xa1));
    await g.get('d2').write(0, fill(4096, 0xa2));
    const reads = faults.map((f) => f.addRule({ op: 'read' }));
    await expectPattern(q, 0, 4096, 0xa0);
    assert.deepEqual(reads.map((r) => r.hits), [1, 0, 0], 'only children.0 was read');
    faults[0]!.addRule({ op: 'read', errno: 'EIO' });
    await expectPattern(q, 0, 4096, 0xa1, 'falls back to children.1');
    assert.deepEqual(bad.map((b) => [b.type, b['node-name'], b.error]), [['read', 'f0', 'Input/output error']]);
    faults[1]!.addRule({ op: 'read', errno: 'EIO' });
    faults[2]!.addRule({ op: 'read', errno: 'ENOMEDIUM' });
    await assert.rejects(q.read(0, Buffer.alloc(4096)), { code: 'ENOMEDIUM' }, 'the last error');
    await g.closeAll();
  });

  test('quorum reads return the version a majority agrees on', async () => {
    const { g, q, bad, failures } = await quorumOf(3, { 'vote-threshold': 2 });
    for (const d of ['d0', 'd1', 'd2']) await g.get(d).write(0, fill(4096, 0x31));
    await g.get('d0').write(1024, fill(1, 0xee));
    await expectPattern(q, 0, 4096, 0x31, 'the majority version');
    assert.deepEqual(bad, [{ type: 'read', 'node-name': 'f0', 'sector-num': 0, 'sectors-count': 8 }], 'the loser is reported without an error text');
    // Three different versions: no version has two votes.
    await g.get('d1').write(0, fill(1, 0xdd));
    await assert.rejects(q.read(0, Buffer.alloc(4096)), { code: 'EIO' });
    assert.equal(failures.length, 1);
    await g.closeAll();
  });

  test('rewrite-corrupted repairs the losing child', async () => {
    const { g, q } = await quorumOf(3, { 'vote-threshold': 2, 'rewrite-corrupted': true });
    for (const d of ['d0', 'd1', 'd2']) await g.get(d).write(0, fill(4096, 0x31));
    await g.get('d2').write(0, fill(4096, 0x66));
    await expectPattern(q, 0, 4096, 0x31);
    await expectPattern(g.get('d2'), 0, 4096, 0x31, 'repaired');
    await g.closeAll();
  });

  test('flush succeeds with enough children and reports the failing one', async () => {
    const { g, q, faults, bad } = await quorumOf(2, { 'vote-threshold': 1 });
    faults[1]!.addRule({ op: 'flush', errno: 'EIO', count: 1 });
    await q.flush();
    assert.deepEqual(bad, [{ type: 'flush', error: 'Input/output error', 'node-name': 'f1', 'sector-num': 0, 'sectors-count': 0 }]);
    faults[0]!.addRule({ op: 'flush', errno: 'EIO', count: 1 });
    faults[1]!.addRule({ op: 'flush', errno: 'EIO', count: 1 });
    await assert.rejects(q.flush(), { code: 'EIO' });
    await g.closeAll();
  });

  test('block status: zero only where every child reads zeroes', async () => {
    const { g, q } = await quorumOf(2, { 'vote-threshold': 1 });
    await g.get('d0').write(0, fill(65536, 1));
    const st = await q.blockStatus(0, SIZE);
    assert.equal(st.flags & Status.DATA, Status.DATA);
    assert.equal(st.length, 65536);
    const zero = await q.blockStatus(65536, SIZE - 65536);
    assert.equal(zero.flags & (Status.DATA | Status.ZERO), Status.ZERO);
    assert.equal(zero.length, SIZE - 65536);
    await g.closeAll();
  });

  test('a primary replication child in NONE is outvoted; the local write stands', async () => {
    const g = createGraph();
    await g.add({ driver: 'memory', 'node-name': 'primary-disk0', size: SIZE });
    await g.add({ driver: 'memory', 'node-name': 'nbd', size: SIZE });
    await g.add({ driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['primary-disk0'] });
    await g.add({ driver: 'replication', 'node-name': 'replication0', mode: 'primary', file: 'nbd' });
    const q = g.get('colo-disk0') as QuorumNode;
    q.addChild(g.get('replication0'));
    const bad: QuorumReportBad[] = [];
    replicationRegistry(g).events.on('quorum-report-bad', (e) => bad.push(e));
    const dev = new BlockBackend('colo-disk0', q);
    await dev.write(0, fill(4096, 0x42));
    await expectPattern(dev, 0, 4096, 0x42, 'fifo reads children.0');
    assert.deepEqual(bad.map((b) => [b['node-name'], b.type]), [['replication0', 'write']]);
    dev.detach();
    await g.closeAll();
  });
});

describe('quorum: x-blockdev-change', () => {
  test('add and remove with QEMU names, counters and messages', async () => {
    const g = createGraph();
    for (const n of ['local', 'r1', 'r2', 'r3', 'other']) await g.add({ driver: 'memory', 'node-name': n, size: SIZE });
    await g.add({ driver: 'memory', 'node-name': 'tiny', size: 4096 });
    const q = await g.add({ driver: 'quorum', 'node-name': 'colo-disk0', 'vote-threshold': 1, 'read-pattern': 'fifo', children: ['local'] }) as QuorumNode;
    assert.ok(isChildManager(q));
    assert.equal(isChildManager(g.get('local')), false);

    q.addChild(g.get('r1'));
    assert.deepEqual(q.childNames, ['children.0', 'children.1']);
    assert.throws(() => q.addChild(g.get('r1')), { message: 'The node r1 already has a parent' });
    const held = new BlockBackend('dev', g.get('other'));
    assert.throws(() => q.addChild(g.get('other')), { message: 'The node other already has a parent' }, 'a BlockBackend is a parent too');
    held.detach();
    assert.throws(() => q.addChild(g.get('tiny')), { message: 'The node tiny has 4096 bytes but the children of colo-disk0 have 1048576' });
    assert.throws(() => q.removeChild('children.7'), { message: "Node 'colo-disk0' does not have child 'children.7'" });

    // Removing the newest child steps the counter back.
    q.removeChild('children.1');
    assert.deepEqual(q.childNames, ['children.0']);
    q.addChild(g.get('r1'));
    assert.deepEqual(q.childNames, ['children.0', 'children.1']);
    q.addChild(g.get('r2'));
    // Removing one in the middle leaves a gap; the counter only goes up.
    q.removeChild('children.1');
    q.addChild(g.get('r3'));
    assert.deepEqual(q.childNames, ['children.0', 'children.2', 'children.3']);
    assert.equal(g.get('r1').parents.size, 0, 'the removed child is detached');
    assert.equal(g.get('r1').isClosed, false, 'a monitor-owned child stays open');
    await g.delete('r1');

    q.removeChild('children.0');
    q.removeChild('children.3');
    assert.deepEqual(q.childNames, ['children.2']);
    assert.throws(() => q.removeChild('children.2'), { message: 'The number of children cannot be lower than the vote threshold 1' });
    // Reads and writes use the current children.
    await q.write(0, fill(512, 0x77));
    await expectPattern(g.get('r2'), 0, 512, 0x77);
    await g.closeAll();
  });

  test('removing an inline child closes it', async () => {
    const g = createGraph();
    const q = await g.add({
      driver: 'quorum', 'node-name': 'q', 'vote-threshold': 1,
      children: [{ driver: 'memory', 'node-name': 'a', size: SIZE }, { driver: 'memory', 'node-name': 'b', size: SIZE }],
    }) as QuorumNode;
    const b = g.get('b');
    q.removeChild('children.1');
    await until(() => b.isClosed, 'the inline child to close');
    await g.closeAll();
  });
});
