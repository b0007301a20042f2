/**
 * Open-time (spec 6.1) and start-time (spec 6.2) checks of the replication
 * node: QEMU's messages in QEMU's order, plus colo-blk's clean undo of a
 * failed start (QEMU leaves children attached, section 9 item 4).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockBackend } from '../../src/block/backend.js';
import { BlockError } from '../../src/block/errors.js';
import type { BlockGraph, DriverDefinition } from '../../src/block/graph.js';
import { BlockNode } from '../../src/block/node.js';
import { createGraph } from '../../src/drivers/index.js';
import { MemoryNode } from '../../src/drivers/memory.js';
import type { ReplicationNode } from '../../src/replication/node.js';
import { replicationRegistry } from '../../src/replication/registry.js';
import { MiB, expectPattern, fill } from './fixtures.js';

const SIZE = 4 * MiB;

/** An overlay that reads its backing and cannot be emptied. */
class PlainOverlay extends BlockNode {
  readonly driver = 'plain-overlay';
  constructor(name: string, backing: BlockNode) {
    super(name, false);
    this.setChild('backing', backing);
  }
  override get size(): number { return this.backing!.size; }
  protected doRead(offset: number, buf: Buffer): Promise<void> { return this.backing!.read(offset, buf); }
  protected doWrite(): Promise<void> { return Promise.reject(new BlockError('ENOTSUP', 'plain overlay')); }
  protected doFlush(): Promise<void> { return Promise.resolve(); }
}

/** A memory overlay that can be reopened read-only or read-write, counting reopens. */
class ReopenableMemory extends MemoryNode {
  reopens: boolean[] = [];
  async reopen(options: { readOnly: boolean }): Promise<void> {
    this.reopens.push(options.readOnly);
    this.readOnly = options.readOnly;
  }
}

/** A memory overlay counting make-empty calls. */
class CountingEmpty extends MemoryNode {
  empties = 0;
  protected override async doMakeEmpty(): Promise<void> {
    this.empties++;
    await super.doMakeEmpty();
  }
}

/** A memory overlay whose make-empty fails with EIO. */
class FailingEmpty extends MemoryNode {
  protected override async doMakeEmpty(): Promise<void> {
    throw new BlockError('EIO', 'injected');
  }
}

const testDrivers: DriverDefinition[] = [
  {
    name: 'plain-overlay',
    kind: 'format',
    async open(ctx) {
      const backing = await ctx.openChild('backing');
      return new PlainOverlay(ctx.nodeName!, backing!);
    },
  },
  {
    name: 'reopenable-memory',
    kind: 'format',
    async open(ctx) {
      const backing = (await ctx.openChild('backing')) ?? null;
      const size = ctx.options.optInt('size') ?? backing!.size;
      return new ReopenableMemory(ctx.nodeName, ctx.readOnly, size, 65536, backing);
    },
  },
  {
    name: 'counting-empty',
    kind: 'format',
    async open(ctx) {
      const backing = (await ctx.openChild('backing')) ?? null;
      return new CountingEmpty(ctx.nodeName, false, backing!.size, 65536, backing);
    },
  },
  {
    name: 'failing-empty',
    kind: 'format',
    async open(ctx) {
      const backing = (await ctx.openChild('backing')) ?? null;
      return new FailingEmpty(ctx.nodeName, false, backing!.size, 65536, backing);
    },
  },
];

function graphWithTestDrivers(): BlockGraph {
  const g = createGraph();
  for (const d of testDrivers) g.register(d);
  return g;
}

test('open: QEMU messages in QEMU order', async () => {
  const g = createGraph();
  await g.add({ driver: 'memory', 'node-name': 'disk', size: SIZE });
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ mode: 'primary' }, 'A block device must be specified for "file"'],
    [{ file: 'disk' }, 'Missing the option mode'],
    [{ file: 'disk', bogus: 1 }, 'Missing the option mode'],
    [{ file: 'disk', mode: 'primary', 'top-id': 'x' }, 'The primary side does not support option top-id'],
    [{ file: 'disk', mode: 'secondary' }, 'Missing the option top-id'],
    [{ file: 'disk', mode: 'tertiary' }, "The option mode's value should be primary or secondary"],
    [{ file: 'disk', mode: 'primary', bogus: 1 }, "Block format 'replication' does not support the option 'bogus'"],
  ];
  for (const [opts, message] of cases) {
    await assert.rejects(g.add({ driver: 'replication', 'node-name': 'r', ...opts } as never), (e: unknown) => {
      assert.equal((e as Error).message, message);
      return true;
    });
    assert.equal(g.lookup('r'), undefined, 'nothing is left behind');
    assert.equal(replicationRegistry(g).list().length, 0, 'no registration survives a failed open');
  }
  // Nothing about the topology is checked at open.
  const r = await g.add({ driver: 'replication', 'node-name': 'r', mode: 'secondary', 'top-id': 'nosuch', file: 'disk' });
  assert.equal(replicationRegistry(g).list()[0], r);
  await g.closeAll();
});

test('open: keyval form and blockdev-del of a node still in a quorum', async () => {
  const g = createGraph();
  await g.add({ driver: 'memory', 'node-name': 'local', size: SIZE });
  await g.add({ driver: 'memory', 'node-name': 'nbdish', size: SIZE });
  await g.add({ driver: 'replication', 'node-name': 'replication0', mode: 'primary', file: 'nbdish' });
  const q = await g.add({ driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': '1', children: ['local', 'replication0'] });
  await assert.rejects(g.delete('replication0'), { message: 'Block device replication0 is in use' });
  assert.ok(q);
  await g.closeAll();
});

interface Layout {
  g: BlockGraph;
  repl: ReplicationNode;
  local: BlockNode;
  bb: BlockBackend | null;
}

async function layout(opts: {
  activeDriver?: string;
  hiddenBacking?: boolean;
  backend?: boolean;
  activeSize?: number;
  hiddenReadOnly?: boolean;
  topId?: string;
} = {}): Promise<Layout> {
  const g = graphWithTestDrivers();
  const local = await g.add({ driver: 'memory', 'node-name': 'local', size: SIZE });
  const bb = opts.backend === false ? null : new BlockBackend('local-bb', local);
  await bb?.write(0, fill(SIZE, 0x11));
  const hidden: Record<string, unknown> = { driver: 'memory', 'node-name': 'hidden', size: SIZE };
  if (opts.hiddenBacking !== false) hidden.backing = 'local';
  if (opts.hiddenReadOnly) hidden['read-only'] = true;
  await g.add(hidden as never);
  const active: Record<string, unknown> = { driver: opts.activeDriver ?? 'memory', 'node-name': 'active', backing: 'hidden' };
  if (opts.activeSize) active.size = opts.activeSize;
  await g.add(active as never);
  const repl = await g.add({
    driver: 'replication', 'node-name': 'repl', mode: 'secondary', 'top-id': opts.topId ?? 'repl', file: 'active',
  }) as ReplicationNode;
  return { g, repl, local, bb };
}

async function startFails(l: Layout, message: string): Promise<void> {
  await assert.rejects(l.repl.start('secondary'), (e: unknown) => {
    assert.equal((e as Error).message, message);
    return true;
  });
  assert.equal(l.repl.stage, 'none');
  assert.equal(l.repl.children.has('hidden disk'), false, 'no extra child is left attached');
  assert.equal(l.repl.children.has('secondary disk'), false);
  if (l.bb) assert.equal(l.bb.node, l.local, 'no copy-before-write filter is left behind');
}

test('start: stage and mode come first', async () => {
  const l = await layout();
  await assert.rejects(l.repl.start('primary'), { message: "The parameter mode's value is invalid, needs 1, but got 0" });
  await l.repl.start('secondary');
  await assert.rejects(l.repl.start('secondary'), { message: 'Block replication is running or done' });
  // Stage is checked before mode.
  await assert.rejects(l.repl.start('primary'), { message: 'Block replication is running or done' });
  await l.g.closeAll();

  const g = createGraph();
  await g.add({ driver: 'memory', 'node-name': 'nbd', size: SIZE });
  const p = await g.add({ driver: 'replication', 'node-name': 'p', mode: 'primary', file: 'nbd' }) as ReplicationNode;
  await assert.rejects(p.start('secondary'), { message: "The parameter mode's value is invalid, needs 0, but got 1" });
  await g.closeAll();
});

test('start: active disk without backing', async () => {
  const g = createGraph();
  await g.add({ driver: 'memory', 'node-name': 'active', size: SIZE });
  const repl = await g.add({ driver: 'replication', 'node-name': 'repl', mode: 'secondary', 'top-id': 'repl', file: 'active' }) as ReplicationNode;
  await assert.rejects(repl.start('secondary'), { message: "Active disk doesn't have backing file" });
  await g.closeAll();
});

test('start: hidden disk without backing', async () => {
  const l = await layout({ hiddenBacking: false });
  await startFails(l, "Hidden disk doesn't have backing file");
  await l.g.closeAll();
});

test('start: secondary disk without a block backend', async () => {
  const l = await layout({ backend: false });
  await startFails(l, "The secondary disk doesn't have block backend");
  await l.g.closeAll();
});

test('start: lengths differ', async () => {
  const l = await layout({ activeSize: SIZE / 2 });
  await startFails(l, "Active disk, hidden disk, secondary disk's length are not the same");
  await l.g.closeAll();
});

test('start: active disk cannot be emptied', async () => {
  const l = await layout({ activeDriver: 'plain-overlay' });
  await startFails(l, "Active disk or hidden disk doesn't support make_empty");
  await l.g.closeAll();
});

test('start: a read-only hidden disk whose driver cannot reopen it is refused with a clear message', async () => {
  const l = await layout({ hiddenReadOnly: true });
  await startFails(l, "Block node 'hidden' is read-only and its driver (memory) cannot reopen it read-write");
  await l.g.closeAll();
});

test('start reopens read-only hidden and secondary disks read-write; they go back when the backup job ends', async () => {
  const g = graphWithTestDrivers();
  const local = await g.add({ driver: 'reopenable-memory', 'node-name': 'local', size: SIZE, 'read-only': true }) as ReopenableMemory;
  const bb = new BlockBackend('nbd', local);
  // An inline backing file opens read-only, as in test-replication.c's layout.
  const repl = await g.add({
    driver: 'replication', 'node-name': 'repl', mode: 'secondary', 'top-id': 'repl',
    file: { driver: 'memory', 'node-name': 'active', backing: { driver: 'reopenable-memory', 'node-name': 'hidden', 'read-only': true, backing: 'local' } },
  }) as ReplicationNode;
  const hidden = g.get('hidden') as ReopenableMemory;
  await repl.start('secondary');
  assert.deepEqual([hidden.readOnly, local.readOnly], [false, false]);
  await bb.write(0, fill(65536, 0x22));
  await repl.stop(true);
  // The backup job's end puts both back; the commit then reopens its base read-write and restores it (QEMU's base_ro).
  await repl.failoverSettled();
  assert.equal(repl.stage, 'done');
  assert.deepEqual(hidden.reopens, [false, true]);
  assert.deepEqual(local.reopens, [false, true, false, true]);
  assert.equal(local.readOnly, true);
  bb.detach();
  await g.closeAll();
});

test('a failed reopen is start\'s error and undoes earlier reopens', async () => {
  const g = graphWithTestDrivers();
  await g.add({ driver: 'memory', 'node-name': 'local', size: SIZE, 'read-only': true });
  const bb = new BlockBackend('nbd', g.get('local'));
  await g.add({ driver: 'reopenable-memory', 'node-name': 'hidden', 'read-only': true, backing: 'local' });
  await g.add({ driver: 'memory', 'node-name': 'active', backing: 'hidden' });
  const repl = await g.add({ driver: 'replication', 'node-name': 'repl', mode: 'secondary', 'top-id': 'repl', file: 'active' }) as ReplicationNode;
  await assert.rejects(repl.start('secondary'), { message: "Block node 'local' is read-only and its driver (memory) cannot reopen it read-write" });
  const hidden = g.get('hidden') as ReopenableMemory;
  assert.deepEqual(hidden.reopens, [false, true], 'hidden went back to read-only');
  assert.equal(repl.stage, 'none');
  bb.detach();
  await g.closeAll();
});

test('start: top-id missing, not a root, or not above the node', async () => {
  const missing = await layout({ topId: 'colo-disk0' });
  await startFails(missing, 'No top_bs or it is invalid');
  // Once the top exists, the same node starts: the failed attempt left nothing behind.
  await missing.g.add({ driver: 'quorum', 'node-name': 'colo-disk0', 'vote-threshold': 1, 'read-pattern': 'fifo', children: ['repl'] });
  await missing.repl.start('secondary');
  assert.equal(missing.repl.stage, 'running');
  await missing.g.closeAll();

  const unrelated = await layout({ topId: 'other' });
  await unrelated.g.add({ driver: 'memory', 'node-name': 'other', size: SIZE });
  await startFails(unrelated, 'No top_bs or it is invalid');
  await unrelated.g.closeAll();

  const notRoot = await layout({ topId: 'repl' });
  await notRoot.g.add({ driver: 'quorum', 'node-name': 'q', 'vote-threshold': 1, children: ['repl'] });
  await startFails(notRoot, 'No top_bs or it is invalid');
  await notRoot.g.closeAll();
});

test('start: top-id may name a device (BlockBackend) as in test-replication.c', async () => {
  const l = await layout({ topId: 'secondary-id' });
  const dev = new BlockBackend('secondary-id', l.repl);
  await l.repl.start('secondary');
  await expectPattern(dev, 0, SIZE, 0x11);
  dev.detach();
  await l.g.closeAll();
});

test('start: a failing initial checkpoint undoes the start (QEMU stays RUNNING)', async () => {
  const l = await layout({ activeDriver: 'failing-empty' });
  // Leftovers from an earlier run: the initial checkpoint must empty them (an empty layer is skipped).
  await l.g.get('active').write(0, fill(512, 0x77));
  await startFails(l, 'Failed to empty memory:active: Input/output error');
  await assert.rejects(l.repl.checkpoint(), { message: 'Backup job was cancelled unexpectedly' });
  assert.throws(() => l.repl.getError(), { message: 'Block replication is not running' });
  await l.g.closeAll();
});

test('start: leftover overlay data is dropped by the initial checkpoint', async () => {
  const l = await layout();
  const active = l.g.get('active');
  const hidden = l.g.get('hidden');
  await active.write(0, fill(MiB, 0x77));
  await hidden.write(2 * MiB, fill(MiB, 0x66));
  await l.repl.start('secondary');
  await expectPattern(l.repl, 0, SIZE, 0x11, 'view after start');
  await l.g.closeAll();
});

test('a checkpoint empties only the layers that hold data', async () => {
  const g = graphWithTestDrivers();
  await g.add({ driver: 'memory', 'node-name': 'local', size: SIZE });
  const nbd = new BlockBackend('nbd', g.get('local'));
  const hidden = await g.add({ driver: 'counting-empty', 'node-name': 'hidden', backing: 'local' }) as CountingEmpty;
  const active = await g.add({ driver: 'counting-empty', 'node-name': 'active', backing: 'hidden' }) as CountingEmpty;
  const repl = await g.add({ driver: 'replication', 'node-name': 'repl', mode: 'secondary', 'top-id': 'repl', file: 'active' }) as ReplicationNode;
  await repl.start('secondary');
  await repl.checkpoint();
  assert.deepEqual([active.empties, hidden.empties], [0, 0], 'nothing buffered: nothing to empty');
  await repl.write(0, fill(512, 1));
  await repl.checkpoint();
  assert.deepEqual([active.empties, hidden.empties], [1, 0]);
  await nbd.write(0, fill(512, 2));
  await repl.checkpoint();
  assert.deepEqual([active.empties, hidden.empties], [1, 1]);
  await expectPattern(repl, 0, 512, 2);
  nbd.detach();
  await g.closeAll();
});
