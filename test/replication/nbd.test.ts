/**
 * Replication across a real NBD socket: a colo-blk pair (both sides in this
 * process, talking through a unix socket), a colo-blk primary replicating
 * into a QEMU 7.2 secondary, and a QEMU 7.2 primary replicating into a
 * colo-blk secondary. Data is checked byte for byte at checkpoints and after
 * failover.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BlockBackend } from '../../src/block/backend.js';
import type { BlockGraph } from '../../src/block/graph.js';
import type { BlockNode } from '../../src/block/node.js';
import { createGraph } from '../../src/drivers/index.js';
import type { QuorumNode } from '../../src/drivers/quorum.js';
import { NbdServer } from '../../src/nbd/server.js';
import { replicationRegistry } from '../../src/replication/registry.js';
import { QemuPrimary, QemuSecondary } from '../../bench/replication-qemu.js';
import { patternBuffer, requireTool, tempDir } from '../helpers/env.js';
import { DISK_KINDS, DiskFactory, KiB, MiB, type DiskKind } from './fixtures.js';

const SIZE = 8 * MiB;

interface Side {
  graph: BlockGraph;
  /** The guest's device: the quorum on top. */
  dev: BlockBackend;
}

interface ColoSecondary extends Side {
  server: NbdServer;
  socket: string;
  disk: BlockNode;
  close(): Promise<void>;
}

/** The anchor's secondary layout, served over NBD on a unix socket. */
async function coloSecondary(kind: DiskKind, dir: ReturnType<typeof tempDir>, base: Buffer | null): Promise<ColoSecondary> {
  const factory = new DiskFactory(kind);
  const graph = createGraph();
  const disk = await graph.add(await factory.disk('parent0', SIZE));
  if (base) await new BlockBackend('fill', disk).write(0, base);
  // Added by name, so read-write (an inline backing would open read-only).
  await graph.add(await factory.disk('hidden0', SIZE, { backing: 'parent0' }));
  await graph.add(await factory.disk('active0', SIZE, { backing: 'hidden0' }));
  await graph.add({ driver: 'replication', 'node-name': 'childs0', mode: 'secondary', 'top-id': 'colo-disk0', file: 'active0' });
  await graph.add({ driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['childs0'] });
  const server = new NbdServer();
  const socket = dir.file(`colo-secondary-${kind}.sock`);
  await server.listen({ type: 'unix', path: socket });
  server.addExport({ name: 'parent0', node: disk, writable: true });
  const dev = new BlockBackend('sec-top', graph.get('colo-disk0'));
  return {
    graph, dev, server, socket, disk,
    async close() {
      dev.detach();
      await server.close({ hard: true });
      for (const e of server.exportList()) await server.removeExport(e.name, 'hard');
      await graph.closeAll();
      factory.cleanup();
    },
  };
}

interface ColoPrimary extends Side {
  disk: BlockNode;
  close(): Promise<void>;
}

/** The anchor's primary: quorum over the local disk, plus a replication child over NBD. */
async function coloPrimary(socket: string, base: Buffer | null): Promise<ColoPrimary> {
  const graph = createGraph();
  const disk = await graph.add({ driver: 'memory', 'node-name': 'primary-disk0', size: SIZE });
  if (base) await new BlockBackend('fill', disk).write(0, base);
  const quorum = await graph.add({ driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['primary-disk0'] }) as QuorumNode;
  const repl = await graph.add({
    driver: 'replication', 'node-name': 'replication0', mode: 'primary',
    file: { driver: 'nbd', server: { type: 'unix', path: socket }, export: 'parent0' },
  });
  quorum.addChild(repl);
  const dev = new BlockBackend('pvm', quorum);
  return {
    graph, dev, disk,
    async close() {
      dev.detach();
      await graph.closeAll();
    },
  };
}

async function readAll(dev: { read(o: number, b: Buffer): Promise<void> }): Promise<Buffer> {
  const b = Buffer.alloc(SIZE, 0xa5);
  await dev.read(0, b);
  return b;
}

function sameBytes(a: Buffer, b: Buffer, what: string): void {
  if (a.equals(b)) return;
  const i = a.findIndex((v, k) => v !== b[k]);
  assert.fail(`${what}: byte ${i} is 0x${a[i]?.toString(16)}, expected 0x${b[i]?.toString(16)}`);
}

/** Guest writes: `count` writes of random size at random offsets, `parallel` at a time. */
async function guestWrites(dev: BlockBackend, model: Buffer, seed: number, count: number, parallel = 8): Promise<void> {
  let x = seed;
  const rand = (n: number): number => {
    x = (x * 1103515245 + 12345) >>> 0;
    return x % n;
  };
  for (let i = 0; i < count; i += parallel) {
    const batch: Array<Promise<void>> = [];
    const taken: Array<[number, number]> = [];
    for (let j = 0; j < parallel && i + j < count; j++) {
      const len = 512 * (1 + rand(256));
      const off = 512 * rand((SIZE - len) / 512);
      if (taken.some(([a, b]) => off < b && a < off + len)) continue;
      taken.push([off, off + len]);
      const data = patternBuffer(len, seed * 1000 + i + j);
      data.copy(model, off);
      batch.push(dev.write(off, data));
    }
    await Promise.all(batch);
  }
}

for (const kind of DISK_KINDS) {
  describe(`colo-blk pair over NBD (${kind} secondary)`, () => {
    test('checkpoints keep the secondary equal to the primary; failover keeps the secondary VM\'s view', async () => {
      const dir = tempDir('colo-blk-nbd-');
      const base = patternBuffer(SIZE, 7);
      const sec = await coloSecondary(kind, dir, base);
      const pri = await coloPrimary(sec.socket, base);
      try {
        await replicationRegistry(sec.graph).setReplication({ enable: true, primary: false });
        await replicationRegistry(pri.graph).setReplication({ enable: true, primary: true });
        const model = Buffer.from(base);
        await guestWrites(pri.dev, model, 1, 64);
        // COLO's order: the primary's checkpoint (it waits for its forwarding window) before the secondary's.
        await replicationRegistry(pri.graph).doCheckpoint();
        await replicationRegistry(sec.graph).doCheckpoint();
        sameBytes(await readAll(pri.disk), model, 'primary disk');
        sameBytes(await readAll(new BlockBackend('check', sec.disk)), model, 'secondary disk');
        sameBytes(await readAll(sec.dev), model, 'secondary view after the checkpoint');
        assert.deepEqual(await replicationRegistry(pri.graph).queryStatus(), { error: false });

        // The secondary VM runs ahead; the primary keeps writing; then the primary dies.
        const view = Buffer.from(model);
        await guestWrites(sec.dev, view, 2, 16);
        await guestWrites(pri.dev, Buffer.from(model), 3, 32);
        await pri.close();
        await sec.server.removeExport('parent0', 'hard');
        await replicationRegistry(sec.graph).setReplication({ enable: false, primary: false, failover: true });
        await replicationRegistry(sec.graph).settled();
        const [st] = replicationRegistry(sec.graph).status();
        assert.equal(st!.stage, 'done');
        sameBytes(await readAll(new BlockBackend('after', sec.disk)), view, 'secondary disk after failover');
        sameBytes(await readAll(sec.dev), view, 'secondary view after failover');
      } finally {
        await pri.close();
        await sec.close();
        dir.cleanup();
      }
    });
  });
}

describe('colo-blk pair over NBD: the link breaks', () => {
  test('primary writes still succeed; the primary latches the NBD error with its detail', async () => {
    const dir = tempDir('colo-blk-nbd-');
    const sec = await coloSecondary('memory', dir, null);
    const pri = await coloPrimary(sec.socket, null);
    try {
      await replicationRegistry(sec.graph).startAll('secondary');
      await replicationRegistry(pri.graph).startAll('primary');
      await pri.dev.write(0, Buffer.alloc(64 * KiB, 1));
      await sec.server.close({ hard: true });
      await sec.server.removeExport('parent0', 'hard');
      await pri.dev.write(MiB, Buffer.alloc(64 * KiB, 2));
      const b = Buffer.alloc(64 * KiB);
      await pri.dev.read(MiB, b);
      assert.ok(b.equals(Buffer.alloc(64 * KiB, 2)), 'the local disk has it');
      assert.deepEqual(await replicationRegistry(pri.graph).queryStatus(), { error: true, desc: 'I/O error occurred' });
      const [err] = replicationRegistry(pri.graph).status()[0]!.errors;
      assert.equal(err!.role, 'nbd');
      assert.equal(err!.operation, 'write');
      assert.equal(err!.guestVisible, false);
    } finally {
      // Closing flushes every node, the dead link included: that flush fails, as it should.
      await pri.close().catch(() => undefined);
      await sec.close();
      dir.cleanup();
    }
  });
});

describe('across implementations', () => {
  test('a colo-blk primary replicates into a QEMU 7.2 secondary', async () => {
    requireTool('qemu-system-x86_64');
    requireTool('qemu-io');
    const dir = tempDir('colo-blk-xqemu-');
    const qemu = await QemuSecondary.start(dir.path, SIZE);
    const pri = await coloPrimary(qemu.nbdSocket, null);
    try {
      await replicationRegistry(pri.graph).startAll('primary');
      const model = Buffer.alloc(SIZE);
      await guestWrites(pri.dev, model, 11, 48);
      // COLO's order: the primary's checkpoint waits for its forwarding window, then the secondary's.
      await replicationRegistry(pri.graph).checkpointAll();
      await qemu.checkpoint();
      sameBytes(await qemu.readExport('parent0', 'disk'), model, "QEMU's secondary disk");
      sameBytes(await qemu.readExport('top', 'view'), model, "QEMU's secondary view after the checkpoint");
      assert.deepEqual(await replicationRegistry(pri.graph).queryStatus(), { error: false });
      assert.deepEqual(await qemu.qmp.execute('query-xen-replication-status'), { error: false });
    } finally {
      await pri.close();
      await qemu.close();
      dir.cleanup();
    }
  });

  test('a QEMU 7.2 primary replicates into a colo-blk secondary', async () => {
    requireTool('qemu-system-x86_64');
    requireTool('qemu-io');
    const dir = tempDir('colo-blk-xqemu-');
    const sec = await coloSecondary(DISK_KINDS[DISK_KINDS.length - 1]!, dir, null);
    const qemu = await QemuPrimary.start(dir.path, SIZE, sec.socket);
    try {
      await replicationRegistry(sec.graph).startAll('secondary');
      await qemu.startReplication();
      const model = Buffer.alloc(SIZE);
      for (let i = 0; i < 12; i++) {
        const off = ((i * 677) % 120) * 64 * KiB + i * 512;
        const len = 512 * (1 + ((i * 37) % 200));
        await qemu.write(off, len, 0x20 + i);
        model.fill(0x20 + i, off, off + len);
      }
      sameBytes(await readAll(sec.dev), Buffer.alloc(SIZE), 'the view holds the last checkpoint until the next');
      await replicationRegistry(sec.graph).doCheckpoint();
      await qemu.checkpoint();
      sameBytes(qemu.readDisk(), model, "QEMU's primary disk");
      sameBytes(await readAll(new BlockBackend('disk', sec.disk)), model, 'colo-blk secondary disk');
      sameBytes(await readAll(sec.dev), model, 'colo-blk secondary view after the checkpoint');
      assert.deepEqual(await qemu.qmp.execute('query-xen-replication-status'), { error: false });

      // The primary dies; the secondary takes over with its view.
      const view = Buffer.from(model);
      await sec.dev.write(3 * MiB, Buffer.alloc(MiB, 0x77));
      view.fill(0x77, 3 * MiB, 4 * MiB);
      await qemu.write(5 * MiB, MiB, 0x78); // after the checkpoint: rolled back
      await qemu.close();
      await sec.server.removeExport('parent0', 'hard');
      await replicationRegistry(sec.graph).setReplication({ enable: false, primary: false, failover: true });
      await replicationRegistry(sec.graph).settled();
      sameBytes(await readAll(new BlockBackend('after', sec.disk)), view, 'colo-blk secondary disk after failover');
    } finally {
      await qemu.close();
      await sec.close();
      dir.cleanup();
    }
  });
});
