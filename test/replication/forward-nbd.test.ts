/**
 * The primary's forwarding window over a real NBD link: the guest's write is
 * answered before the secondary's, and everything that promises "the
 * secondary has it" (flush, the primary's checkpoint, the daemon's `stop`,
 * replication stop) waits for the secondary's answers. A secondary whose
 * disk parks writes shows the difference.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockBackend } from '../../src/block/backend.js';
import type { BlockGraph } from '../../src/block/graph.js';
import type { BlockNode } from '../../src/block/node.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { FaultNode } from '../../src/drivers/fault.js';
import { createGraph } from '../../src/drivers/index.js';
import type { QuorumNode } from '../../src/drivers/quorum.js';
import { NbdServer } from '../../src/nbd/server.js';
import { replicationRegistry } from '../../src/replication/index.js';
import type { ReplicationNode } from '../../src/replication/node.js';
import { nextTurn } from '../../src/util/turn.js';
import { tempDir } from '../helpers/env.js';

const SIZE = 4 << 20;

interface Pair {
  primary: BlockGraph;
  pvm: BlockBackend;
  quorum: QuorumNode;
  replication: ReplicationNode;
  secondaryDisk: BlockNode;
  parked: FaultNode;
  close(): Promise<void>;
}

/** A plain NBD target (no copy-before-write needed here) behind a fault filter, and a primary replicating into it. */
async function pair(window?: number): Promise<Pair> {
  const dir = tempDir('colo-blk-window-');
  const target = createGraph();
  const secondaryDisk = await target.add({ driver: 'memory', 'node-name': 'disk', size: SIZE });
  const parked = await target.add({ driver: 'fault', 'node-name': 'parked', file: 'disk' }) as FaultNode;
  const server = new NbdServer();
  const socket = dir.file('target.sock');
  await server.listen({ type: 'unix', path: socket });
  server.addExport({ name: 'parent0', node: parked, writable: true });

  const primary = createGraph();
  await primary.add({ driver: 'memory', 'node-name': 'local', size: SIZE });
  const quorum = await primary.add({ driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['local'] }) as QuorumNode;
  const replication = await primary.add({
    driver: 'replication', 'node-name': 'replication0', mode: 'primary',
    ...(window === undefined ? {} : { 'x-forward-window': window }),
    file: { driver: 'nbd', server: { type: 'unix', path: socket }, export: 'parent0' },
  }) as ReplicationNode;
  quorum.addChild(replication);
  await replicationRegistry(primary).startAll('primary');
  const pvm = new BlockBackend('pvm', quorum);
  return {
    primary, pvm, quorum, replication, secondaryDisk, parked,
    async close() {
      parked.clearRules();
      pvm.detach();
      await primary.closeAll();
      await server.close({ hard: true });
      for (const e of server.exportList()) await server.removeExport(e.name, 'hard');
      await target.closeAll();
      dir.cleanup();
    },
  };
}

function pending(p: Promise<unknown>): { settled: () => boolean; p: Promise<unknown> } {
  let settled = false;
  const q = p.finally(() => { settled = true; });
  return { settled: () => settled, p: q };
}

async function secondaryBytes(p: Pair, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  await p.secondaryDisk.read(offset, b);
  return b;
}

test('a guest write is answered while the secondary still holds it; flush and checkpoint wait for the secondary', async () => {
  const p = await pair();
  try {
    const hold = p.parked.addRule({ op: 'write', hold: true });
    await p.pvm.write(0, Buffer.alloc(65536, 0x11));
    await hold.waitForHits(1);
    assert.equal(p.replication.window!.requestsOutstanding, 1);
    assert.ok((await secondaryBytes(p, 0, 65536)).equals(Buffer.alloc(65536)), 'not on the secondary yet');

    const flush = pending(p.pvm.flush());
    const checkpoint = pending(replicationRegistry(p.primary).doCheckpoint());
    // Both need the secondary's answer, which the parked write has not given: release it and they end.
    await hold.waitForHits(1);
    assert.equal(flush.settled(), false);
    assert.equal(checkpoint.settled(), false);
    hold.remove();
    await Promise.all([flush.p, checkpoint.p]);
    assert.ok((await secondaryBytes(p, 0, 65536)).equals(Buffer.alloc(65536, 0x11)));
    assert.equal(p.replication.window!.requestsOutstanding, 0);
  } finally {
    await p.close();
  }
});

test('a rewrite of the same block reaches the secondary after the first, whatever the secondary does first', async () => {
  const p = await pair();
  try {
    // The first write is parked; the second (same block) is answered to the guest but must not overtake it.
    const hold = p.parked.addRule({ op: 'write', hold: true, count: 1 });
    await p.pvm.write(4096, Buffer.alloc(4096, 0x01));
    await hold.waitForHits(1);
    const second = pending(p.pvm.write(4096, Buffer.alloc(4096, 0x02)));
    await nextTurn();
    assert.equal(p.replication.window!.requestsOutstanding, 1, 'the rewrite waits for the first answer');
    hold.release();
    await second.p;
    await p.pvm.flush();
    assert.ok((await secondaryBytes(p, 4096, 4096)).equals(Buffer.alloc(4096, 0x02)));
  } finally {
    await p.close();
  }
});

test("the daemon's stop (a COLO pause) returns only once the secondary answered every acknowledged write", async () => {
  const p = await pair();
  const daemon = new Daemon({ graph: p.primary });
  try {
    await daemon.startNbdServer({ addr: { type: 'inet', host: '127.0.0.1', port: '0' } });
    daemon.addExport({ id: 'pvm', node: 'colo-disk0', name: 'pvm', writable: true });
    const hold = p.parked.addRule({ op: 'write', hold: true });
    await p.pvm.write(8192, Buffer.alloc(8192, 0x33));
    await hold.waitForHits(1);
    const stop = pending(daemon.pause());
    await nextTurn();
    assert.equal(stop.settled(), false);
    hold.remove();
    await stop.p;
    assert.ok((await secondaryBytes(p, 8192, 8192)).equals(Buffer.alloc(8192, 0x33)));
  } finally {
    daemon.resume();
    await daemon.stopNbdServer().catch(() => undefined);
    await p.close();
  }
});

test('x-forward-window 0 keeps QEMU\'s behaviour: the guest waits for the secondary', async () => {
  const p = await pair(0);
  try {
    const hold = p.parked.addRule({ op: 'write', hold: true });
    const write = pending(p.pvm.write(0, Buffer.alloc(4096, 0x44)));
    await hold.waitForHits(1);
    await nextTurn();
    assert.equal(write.settled(), false);
    hold.remove();
    await write.p;
  } finally {
    await p.close();
  }
});

test('a lost link: writes in the window fail on the secondary side, the guest saw success, the error is latched', async () => {
  const p = await pair();
  try {
    const fail = p.parked.addRule({ op: 'write', errno: 'EIO' });
    await p.pvm.write(0, Buffer.alloc(4096, 0x55));
    await p.pvm.flush().catch(() => undefined);
    assert.equal(fail.hits, 1);
    assert.deepEqual(await replicationRegistry(p.primary).queryStatus(), { error: true, desc: 'I/O error occurred' });
    const local = Buffer.alloc(4096);
    await p.pvm.read(0, local);
    assert.ok(local.equals(Buffer.alloc(4096, 0x55)));
  } finally {
    await p.close();
  }
});

test('a writer that reuses its buffer as soon as it is answered does not change what the secondary gets', async () => {
  const p = await pair();
  try {
    // Small payloads are copied; large ones are answered once they are in the kernel's socket buffer.
    for (const [offset, length] of [[0, 4096], [65536, 65536], [1 << 20, 1 << 20], [2 << 20, (1 << 20) + 512]] as const) {
      const buf = Buffer.alloc(length, 0x70 + length % 7);
      const original = Buffer.from(buf);
      await p.pvm.write(offset, buf);
      buf.fill(0xee);
      await p.pvm.flush();
      assert.ok((await secondaryBytes(p, offset, length)).equals(original), `write of ${length} at ${offset}`);
    }
  } finally {
    await p.close();
  }
});

test('an NBD client\'s payloads (stable buffers) are forwarded without a copy and still arrive intact', async () => {
  const p = await pair();
  const daemon = new Daemon({ graph: p.primary });
  try {
    const addr = await daemon.startNbdServer({ addr: { type: 'inet', host: '127.0.0.1', port: '0' } });
    daemon.addExport({ id: 'pvm', node: 'colo-disk0', name: 'pvm', writable: true });
    const client = createGraph();
    const pvm = await client.add({
      driver: 'nbd', 'node-name': 'guest',
      server: { type: 'inet', host: '127.0.0.1', port: String((addr as { port: string | number }).port) }, export: 'pvm',
    });
    const data = Buffer.alloc(3 << 20);
    for (let i = 0; i < data.length; i += 4096) data.fill((i >> 12) & 0xff, i, i + 4096);
    await Promise.all([0, 1, 2].map((k) => pvm.write(k << 20, data.subarray(k << 20, (k + 1) << 20))));
    await pvm.flush();
    await client.closeAll();
    assert.ok((await secondaryBytes(p, 0, 3 << 20)).equals(data));
  } finally {
    await daemon.stopNbdServer().catch(() => undefined);
    await p.close();
  }
});

test('primary stop: a clean stop waits for the window; a failover does not wait for a secondary that stopped answering', async () => {
  const p = await pair();
  try {
    const hold = p.parked.addRule({ op: 'write', hold: true, errno: 'EIO' });
    await p.pvm.write(0, Buffer.alloc(4096, 0x21));
    await hold.waitForHits(1);
    // Failover: the stage is DONE at once, the parked write does not hold it, and its late failure is not latched.
    await p.replication.stop(true);
    assert.equal(p.replication.stage, 'done');
    assert.equal(p.replication.window!.requestsOutstanding, 1);
    hold.release();
    await p.replication.window!.settled();
    assert.deepEqual(p.replication.latchedErrors, []);
  } finally {
    await p.close();
  }
  const q = await pair();
  try {
    const hold = q.parked.addRule({ op: 'write', hold: true });
    await q.pvm.write(0, Buffer.alloc(4096, 0x22));
    await hold.waitForHits(1);
    const stop = pending(q.replication.stop(false));
    await nextTurn();
    assert.equal(stop.settled(), false, 'a clean stop waits for the secondary');
    hold.remove();
    await stop.p;
    assert.ok((await secondaryBytes(q, 0, 4096)).equals(Buffer.alloc(4096, 0x22)));
  } finally {
    await q.close();
  }
});

test('x-forward-window takes a byte count and refuses anything else; the secondary side does not take it', async () => {
  const g = createGraph();
  await g.add({ driver: 'memory', 'node-name': 'm', size: 1 << 20 });
  await assert.rejects(g.add({ driver: 'replication', 'node-name': 'r1', mode: 'primary', 'x-forward-window': -1, file: 'm' }),
    /Parameter 'x-forward-window' is out of range/);
  await assert.rejects(g.add({ driver: 'replication', 'node-name': 'r2', mode: 'primary', 'x-forward-window': 'lots', file: 'm' }),
    /x-forward-window/);
  const r = await g.add({ driver: 'replication', 'node-name': 'r3', mode: 'primary', 'x-forward-window': '1M', file: 'm' }) as ReplicationNode;
  assert.equal(r.window!.limits.maxBytes, 1 << 20);
  await assert.rejects(g.add({ driver: 'replication', 'node-name': 'r4', mode: 'secondary', 'top-id': 'x', 'x-forward-window': 0, file: 'm' }),
    /The secondary side does not support option x-forward-window/);
  await g.closeAll();
});
