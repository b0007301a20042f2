import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { BlockBackend } from '../../src/block/backend.js';
import { BlockError } from '../../src/block/errors.js';
import type { DriverDefinition } from '../../src/block/graph.js';
import { BlockNode } from '../../src/block/node.js';
import type { ChildManager } from '../../src/control/child-manager.js';
import { createGraph } from '../../src/drivers/index.js';
import { tempDir } from '../helpers/env.js';
import { client, rejectsQmp, startServer } from './helpers.js';

/** A minimal quorum: children.N, add/remove at run time, a vote threshold. */
class FakeQuorum extends BlockNode implements ChildManager {
  readonly driver = 'fake-quorum';
  private next = 0;

  constructor(name: string | undefined, children: BlockNode[], private readonly threshold: number) {
    super(name, false);
    for (const c of children) this.setChild(`children.${this.next++}`, c);
  }

  get size(): number {
    return [...this.children.values()][0]?.node.size ?? 0;
  }

  addChild(node: BlockNode): void {
    if (node === this) throw new BlockError('EINVAL', `Making '${this.nodeName}' a children.${this.next} child of '${this.nodeName}' would create a cycle`);
    this.setChild(`children.${this.next++}`, node);
  }

  removeChild(name: string): void {
    if (this.children.size - 1 < this.threshold) {
      throw new BlockError('EINVAL', `The number of children cannot be lower than the vote threshold ${this.threshold}`);
    }
    this.setChild(name, null);
    if (name === `children.${this.next - 1}`) this.next--;
  }

  protected doRead(offset: number, buf: Buffer): Promise<void> { return [...this.children.values()][0]!.node.read(offset, buf); }
  protected doWrite(): Promise<void> { return Promise.resolve(); }
  protected doFlush(): Promise<void> { return Promise.resolve(); }
}

const fakeQuorumDriver: DriverDefinition = {
  name: 'fake-quorum',
  kind: 'format',
  async open(ctx) {
    const names = ctx.options.take('children');
    if (!Array.isArray(names)) throw new BlockError('EINVAL', "Parameter 'children' is missing");
    const threshold = ctx.options.optInt('vote-threshold') ?? 1;
    return new FakeQuorum(ctx.nodeName, names.map((n) => ctx.graph.get(String(n))), threshold);
  },
};

async function setup() {
  const graph = createGraph();
  graph.register(fakeQuorumDriver);
  const t = await startServer({ graph });
  const c = await client(t.path);
  return { t, c, graph, async close() { await c.close(); await t.close(); } };
}

test('blockdev-add and blockdev-del with QEMU messages', async () => {
  const { c, graph, close } = await setup();
  const dir = tempDir();
  try {
    const img = dir.file('d.raw');
    writeFileSync(img, Buffer.alloc(1 << 20));
    await c.execute('blockdev-add', { driver: 'raw', 'node-name': 'd0', file: { driver: 'file', filename: img } });
    assert.ok(graph.lookup('d0'));
    await rejectsQmp(c.execute('blockdev-add', { 'node-name': 'x' }), 'GenericError', "Parameter 'driver' is missing");
    await rejectsQmp(c.execute('blockdev-add', { driver: 'nosuch', 'node-name': 'x' }), 'GenericError', "Parameter 'driver' does not accept value 'nosuch'");
    await rejectsQmp(c.execute('blockdev-add', { driver: 5, 'node-name': 'x' }), 'GenericError', "Invalid parameter type for 'driver', expected: string");
    await rejectsQmp(c.execute('blockdev-add', { driver: 'raw', file: 'd0' }), 'GenericError', "'node-name' must be specified for the root node");
    await rejectsQmp(c.execute('blockdev-add', { driver: 'raw', 'node-name': 7, file: 'd0' }), 'GenericError', "Invalid parameter type for 'node-name', expected: string");
    await rejectsQmp(c.execute('blockdev-add', { driver: 'raw', 'node-name': 'd0', file: { driver: 'file', filename: img } }), 'GenericError', "Duplicate nodes with node-name='d0'");
    await rejectsQmp(c.execute('blockdev-add', { driver: 'raw', 'node-name': 'd1', file: { driver: 'file', filename: dir.file('nosuch') } }), 'GenericError', `Could not open '${dir.file('nosuch')}': No such file or directory`);
    await rejectsQmp(c.execute('blockdev-add', { driver: 'raw', 'node-name': 'd1', file: 'nosuch' }), 'GenericError', "Cannot find device='nosuch' nor node-name='nosuch'");
    assert.equal(graph.lookup('d1'), undefined, 'nothing half-opened is left');

    await rejectsQmp(c.execute('blockdev-del', {}), 'GenericError', "Parameter 'node-name' is missing");
    await rejectsQmp(c.execute('blockdev-del', { 'node-name': 5 }), 'GenericError', "Invalid parameter type for 'node-name', expected: string");
    await rejectsQmp(c.execute('blockdev-del', { 'node-name': 'nosuch' }), 'GenericError', "Failed to find node with node-name='nosuch'");
    await rejectsQmp(c.execute('blockdev-del', { 'node-name': 'd0', x: 1 }), 'GenericError', "Parameter 'x' is unexpected");

    const [d0] = await c.execute<Array<Record<string, Record<string, unknown>>>>('query-named-block-nodes', { flat: true });
    assert.equal(d0!.image!['actual-size'], 1 << 20, 'actual-size: host blocks of the file below (tmpfs allocates the zeroes written)');
    await c.execute('blockdev-add', { driver: 'raw', 'node-name': 'top', file: 'd0' });
    await rejectsQmp(c.execute('blockdev-del', { 'node-name': 'd0' }), 'GenericError', 'Block device d0 is in use');
    const fileNode = graph.lookup('d0')!.file!;
    await rejectsQmp(c.execute('blockdev-del', { 'node-name': fileNode.nodeName }), 'GenericError', `Node ${fileNode.nodeName} is not owned by the monitor`);
    const exported = new BlockBackend('export', graph.lookup('top')!);
    await rejectsQmp(c.execute('blockdev-del', { 'node-name': 'top' }), 'GenericError', 'Node top is in use');
    exported.detach();
    await c.execute('blockdev-del', { 'node-name': 'top' });
    await c.execute('blockdev-del', { 'node-name': 'd0' });
    assert.deepEqual(graph.allNodes(), []);
  } finally {
    await close();
    dir.cleanup();
  }
});

test('query-named-block-nodes gives QEMU fields, in QEMU order, and the backing chain unless flat', async () => {
  const { c, close } = await setup();
  try {
    await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'base', size: 1 << 20 });
    await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'hidden', backing: 'base' });
    await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'active', backing: 'hidden' });
    const nodes = await c.execute<Array<Record<string, unknown>>>('query-named-block-nodes');
    assert.deepEqual(nodes.map((n) => n['node-name']), ['active', 'hidden', 'base']);
    const active = nodes[0]!;
    // The member order qemu-system-x86_64 7.2 prints for a node.
    assert.deepEqual(Object.keys(active), [
      'iops_rd', 'detect_zeroes', 'image', 'iops_wr', 'ro', 'node-name', 'backing_file_depth', 'drv', 'iops', 'bps_wr',
      'write_threshold', 'backing_file', 'encrypted', 'bps', 'bps_rd', 'cache', 'file',
    ]);
    assert.equal(active.drv, 'memory');
    assert.equal(active.ro, false);
    assert.equal(active.backing_file_depth, 2);
    assert.deepEqual(active.cache, { 'no-flush': false, direct: false, writeback: true });
    const image = active.image as Record<string, unknown>;
    assert.equal(image['virtual-size'], 1 << 20);
    assert.equal((image['backing-image'] as Record<string, unknown>).filename, 'memory:hidden');
    assert.equal(((image['backing-image'] as Record<string, unknown>)['backing-image'] as Record<string, unknown>).filename, 'memory:base');

    const flat = await c.execute<Array<Record<string, unknown>>>('query-named-block-nodes', { flat: true });
    assert.equal(flat[0]!.backing_file_depth, 0, 'QEMU counts the depth only for the nested form');
    assert.equal((flat[0]!.image as Record<string, unknown>)['backing-image'], undefined);
    await rejectsQmp(c.execute('query-named-block-nodes', { flat: 'yes' }), 'GenericError', "Invalid parameter type for 'flat', expected: boolean");
  } finally {
    await close();
  }
});

test('x-blockdev-change: argument checks, add and remove through a ChildManager, QEMU messages', async () => {
  const { c, graph, close } = await setup();
  try {
    for (const n of ['d0', 'd1', 'other']) await c.execute('blockdev-add', { driver: 'memory', 'node-name': n, size: 65536 });
    await c.execute('blockdev-add', { driver: 'fake-quorum', 'node-name': 'colo-disk0', children: ['d0'], 'vote-threshold': 1 });
    const change = (args: Record<string, unknown>) => c.execute('x-blockdev-change', args);
    await rejectsQmp(change({}), 'GenericError', "Parameter 'parent' is missing");
    await rejectsQmp(change({ parent: 'colo-disk0' }), 'GenericError', 'Either child or node must be specified');
    await rejectsQmp(change({ parent: 'colo-disk0', child: 'children.0', node: 'd1' }), 'GenericError', 'The parameters child and node are in conflict');
    await rejectsQmp(change({ parent: 'nosuch' }), 'GenericError', "Cannot find device='nosuch' nor node-name='nosuch'");
    await rejectsQmp(change({ parent: 'colo-disk0', child: 'children.7' }), 'GenericError', "Node 'colo-disk0' does not have child 'children.7'");
    await rejectsQmp(change({ parent: 'colo-disk0', node: 'replication0' }), 'GenericError', "Node 'replication0' not found");
    await rejectsQmp(change({ parent: 'other', node: 'd1' }), 'GenericError', 'The node other does not support adding a child');
    await rejectsQmp(change({ parent: 'colo-disk0', node: 'd0' }), 'GenericError', 'The node d0 already has a parent');
    await rejectsQmp(change({ parent: 'colo-disk0', node: 'colo-disk0' }), 'GenericError', "Making 'colo-disk0' a children.1 child of 'colo-disk0' would create a cycle");
    await rejectsQmp(change({ parent: 'colo-disk0', child: 5 }), 'GenericError', "Invalid parameter type for 'child', expected: string");

    await change({ parent: 'colo-disk0', node: 'd1' });
    const quorum = graph.lookup('colo-disk0')!;
    assert.deepEqual([...quorum.children.keys()], ['children.0', 'children.1']);
    assert.equal(quorum.children.get('children.1')!.node, graph.lookup('d1'));

    await change({ parent: 'colo-disk0', child: 'children.0' });
    await rejectsQmp(change({ parent: 'colo-disk0', child: 'children.1' }), 'GenericError', 'The number of children cannot be lower than the vote threshold 1');
    await rejectsQmp(change({ parent: 'colo-disk0', child: 'children.0' }), 'GenericError', "Node 'colo-disk0' does not have child 'children.0'");
    await c.execute('blockdev-add', { driver: 'raw', 'node-name': 'r', file: 'other' });
    await rejectsQmp(change({ parent: 'r', child: 'file' }), 'GenericError', 'The node r does not support removing a child');
  } finally {
    await close();
  }
});

test('x-debug-query-block-graph shows nodes, backends and the edges between them', async () => {
  const { c, graph, close } = await setup();
  try {
    await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'base', size: 65536 });
    await c.execute('blockdev-add', { driver: 'raw', 'node-name': 'top', file: 'base' });
    const exported = new BlockBackend('nbd-export', graph.lookup('top')!);
    const g = await c.execute<{ nodes: Array<{ id: number; type: string; name: string }>; edges: Array<{ parent: number; child: number; name: string }> }>('x-debug-query-block-graph');
    const name = (id: number) => g.nodes.find((n) => n.id === id)!.name;
    assert.deepEqual(g.nodes.map((n) => [n.type, n.name]).sort(), [['block-backend', 'nbd-export'], ['block-driver', 'base'], ['block-driver', 'top']]);
    assert.deepEqual(g.edges.map((e) => `${name(e.parent)} -${e.name}-> ${name(e.child)}`).sort(), ['nbd-export -root-> top', 'top -file-> base']);
    // A swap under all parents (what a finished active commit does) shows up at once.
    await c.execute('blockdev-add', { driver: 'memory', 'node-name': 'other', size: 65536 });
    graph.replaceNode(graph.lookup('base')!, graph.lookup('other')!);
    const after = await c.execute<typeof g>('x-debug-query-block-graph');
    const name2 = (id: number) => after.nodes.find((n) => n.id === id)!.name;
    assert.ok(after.edges.some((e) => e.name === 'file' && name2(e.child) === 'other'));
    exported.detach();
  } finally {
    await close();
  }
});
