/**
 * The nbd block driver against real servers: qemu-nbd, qemu-storage-daemon,
 * nbdkit (with and without structured replies, with block-size constraints)
 * and colo-blk's own server; connection loss and reconnection.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import type { BlockGraph } from '../../src/block/graph.js';
import { Req, Status, type BlockNode } from '../../src/block/node.js';
import { createGraph } from '../../src/drivers/index.js';
import { NbdNode } from '../../src/drivers/nbd.js';
import { NbdServer } from '../../src/nbd/server.js';
import { patternBuffer, sparseFile, tempDir } from '../helpers/env.js';
import { nbdkit, qemuNbd, qemuStorageDaemon, type Peer } from './peers.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

function openNbd(g: BlockGraph, socket: string, extra: Record<string, string | number | boolean> = {}): Promise<BlockNode> {
  return g.open({ driver: 'nbd', server: { type: 'unix', path: socket }, export: 'disk', ...extra });
}

/** Writes, reads, zeroes, discards and flushes through the node; returns what the image must now hold. */
async function exercise(node: BlockNode, size: number): Promise<Buffer> {
  const model = Buffer.alloc(size);
  const big = patternBuffer(34 * MiB, 1); // longer than one request: split at the server's maximum
  await node.write(MiB, big);
  big.copy(model, MiB);
  const back = Buffer.alloc(big.length);
  await node.read(MiB, back);
  assert.ok(back.equals(big), 'a split read returns what a split write wrote');

  // Many requests in flight at once, answered in any order.
  await Promise.all(Array.from({ length: 48 }, (_, i) => {
    const data = Buffer.alloc(65536, i + 1);
    data.copy(model, 40 * MiB + i * 65536);
    return node.write(40 * MiB + i * 65536, data, i % 3 === 0 ? Req.FUA : 0);
  }));
  const reads = await Promise.all(Array.from({ length: 48 }, async (_, i) => {
    const b = Buffer.alloc(65536);
    await node.read(40 * MiB + i * 65536, b);
    return b.every((x) => x === i + 1);
  }));
  assert.ok(reads.every(Boolean));

  await node.writeZeroes(2 * MiB, MiB, Req.MAY_UNMAP);
  await node.writeZeroes(4 * MiB + 512, 4096, 0);
  model.fill(0, 2 * MiB, 3 * MiB);
  model.fill(0, 4 * MiB + 512, 4 * MiB + 4608);
  const z = Buffer.alloc(MiB, 1);
  await node.read(2 * MiB, z);
  assert.ok(z.every((b) => b === 0));

  const odd = Buffer.from('unaligned bytes at an odd offset');
  await node.write(7, odd, Req.FUA);
  odd.copy(model, 7);
  const oddBack = Buffer.alloc(odd.length);
  await node.read(7, oddBack);
  assert.ok(oddBack.equals(odd));

  await node.discard(50 * MiB, MiB); // advisory: content undefined, so zero it again after
  await node.writeZeroes(50 * MiB, MiB, 0);
  model.fill(0, 50 * MiB, 51 * MiB);
  await node.flush();
  const st = await node.blockStatus(0, size);
  assert.ok(st.flags & Status.ALLOCATED, 'an NBD node is a whole disk: always allocated');
  return model;
}

async function withPeer(start: (dir: ReturnType<typeof tempDir>) => Promise<Peer>, body: (g: BlockGraph, dir: ReturnType<typeof tempDir>, peer: Peer) => Promise<void>): Promise<void> {
  const dir = tempDir();
  const g = createGraph();
  const peer = await start(dir);
  try {
    await body(g, dir, peer);
  } finally {
    await g.closeAll();
    await peer.stop();
    dir.cleanup();
  }
}

test('against qemu-nbd: data lands in the image, structured replies and block status work', () => withPeer(
  (dir) => qemuNbd(sparseFile(dir.file('q.raw'), SIZE), dir.file('q.sock'), dir.file('q.pid')),
  async (g, dir) => {
    const node = await openNbd(g, dir.file('q.sock'));
    assert.ok(node instanceof NbdNode);
    assert.equal(node.size, SIZE);
    assert.equal(node.filename, `nbd+unix:///disk?socket=${dir.file('q.sock')}`);
    const model = await exercise(node, SIZE);
    const st = await node.blockStatus(2 * MiB, MiB);
    assert.ok(st.flags & Status.ZERO, 'qemu-nbd reports the zeroed range');
    await g.closeAll();
    assert.ok(readFileSync(dir.file('q.raw')).equals(model), 'the image holds exactly what was written');
  },
));

test('against qemu-storage-daemon\'s NBD export', () => withPeer(
  (dir) => qemuStorageDaemon(sparseFile(dir.file('s.raw'), SIZE), dir.file('s.sock'), dir.file('s.pid')),
  async (g, dir) => {
    const node = await openNbd(g, dir.file('s.sock'));
    const model = await exercise(node, SIZE);
    await g.closeAll();
    assert.ok(readFileSync(dir.file('s.raw')).equals(model));
  },
));

for (const noSr of [false, true]) {
  test(`against nbdkit memory${noSr ? ' with --no-sr (simple replies only)' : ''}`, () => withPeer(
    (dir) => nbdkit(dir.file('k.sock'), dir.file('k.pid'), [...(noSr ? ['--no-sr'] : []), '-e', 'disk', 'memory', `${SIZE}`]),
    async (g, dir) => {
      const node = await openNbd(g, dir.file('k.sock'));
      const model = await exercise(node, SIZE);
      const all = Buffer.alloc(SIZE);
      await node.read(0, all);
      assert.ok(all.equals(model));
    },
  ));
}

test('block-size constraints: unaligned I/O is read-modify-written, racing edits of one block all land', () => withPeer(
  (dir) => nbdkit(dir.file('b.sock'), dir.file('b.pid'), ['-e', 'disk', '--filter=blocksize-policy', 'memory', '16M',
    'blocksize-minimum=4096', 'blocksize-preferred=4096', 'blocksize-maximum=65536', 'blocksize-error-policy=error']),
  async (g, dir) => {
    const node = await openNbd(g, dir.file('b.sock'));
    const model = Buffer.alloc(16 * MiB);
    const data = patternBuffer(300000, 3);
    await node.write(1000, data);
    data.copy(model, 1000);
    // Sixteen writers into the same two blocks at once: each must survive the others' read-modify-write.
    await Promise.all(Array.from({ length: 16 }, (_, i) => {
      const b = Buffer.alloc(300, 0x40 + i);
      b.copy(model, 8192 - 2000 + i * 300);
      return node.write(8192 - 2000 + i * 300, b);
    }));
    await node.writeZeroes(5000, 10000, 0);
    model.fill(0, 5000, 15000);
    const back = Buffer.alloc(400000);
    await node.read(0, back);
    assert.ok(back.equals(model.subarray(0, 400000)));
    const tail = Buffer.alloc(10);
    await node.read(16 * MiB - 10, tail);
    assert.ok(tail.every((b) => b === 0));
  },
));

test('a lost connection fails the request in flight and later ones with EIO', () => withPeer(
  (dir) => nbdkit(dir.file('d.sock'), dir.file('d.pid'), ['-e', 'disk', '--filter=delay', 'memory', '16M', 'delay-read=30']),
  async (g, dir, peer) => {
    const node = await openNbd(g, dir.file('d.sock'));
    const states: string[] = [];
    (node as NbdNode).onConnectionStateChange((state, error) => states.push(`${state}:${error?.code ?? ''}`));
    await node.write(0, Buffer.alloc(4096, 1));
    const inFlight = node.read(0, Buffer.alloc(4096));
    const failed = assert.rejects(inFlight, (e: Error & { code?: string }) => e.code === 'EIO');
    await peer.stop('SIGKILL');
    await failed;
    await assert.rejects(node.write(0, Buffer.alloc(512)), (e: Error & { code?: string }) => e.code === 'EIO');
    assert.equal((node as NbdNode).connectionState, 'dead');
    assert.deepEqual(states, ['dead:EIO']);
    await assert.rejects(g.closeAll(), (e: Error & { code?: string }) => e.code === 'EIO', 'closing flushes, which cannot reach the server');
  },
));

test('reconnect-delay: requests wait for a restarted server and succeed; after the delay they fail', () => withPeer(
  (dir) => qemuNbd(sparseFile(dir.file('r.raw'), SIZE), dir.file('r.sock'), dir.file('r.pid')),
  async (g, dir, peer) => {
    const node = await openNbd(g, dir.file('r.sock'), { 'reconnect-delay': 20 }) as NbdNode;
    const states: string[] = [];
    node.onConnectionStateChange((state) => states.push(state));
    await node.write(0, Buffer.alloc(4096, 0x11), Req.FUA);
    await peer.stop('SIGKILL');
    const during = node.write(8192, Buffer.alloc(4096, 0x22), Req.FUA);
    const restarted = await qemuNbd(dir.file('r.raw'), dir.file('r.sock'), dir.file('r2.pid'));
    try {
      await during;
      assert.equal(node.connectionState, 'connected');
      assert.deepEqual(states, ['waiting', 'connected']);
      await node.flush();
      const img = readFileSync(dir.file('r.raw'));
      assert.ok(img.subarray(0, 4096).every((b) => b === 0x11) && img.subarray(8192, 12288).every((b) => b === 0x22));
    } finally {
      await g.closeAll();
      await restarted.stop();
    }

    const g2 = createGraph();
    const peer3 = await qemuNbd(dir.file('r.raw'), dir.file('r.sock'), dir.file('r3.pid'));
    const short = await openNbd(g2, dir.file('r.sock'), { 'reconnect-delay': 1 }) as NbdNode;
    await peer3.stop('SIGKILL');
    await assert.rejects(short.read(0, Buffer.alloc(512)), (e: Error & { code?: string }) => e.code === 'EIO');
    assert.equal(short.connectionState, 'failing');
    const peer4 = await qemuNbd(dir.file('r.raw'), dir.file('r.sock'), dir.file('r4.pid'));
    try {
      // The background loop keeps trying; wait for the real condition, then I/O works again.
      const deadline = Date.now() + 10_000;
      const state = (): string => short.connectionState;
      while (state() !== 'connected' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const b = Buffer.alloc(512);
      await short.read(0, b);
      assert.ok(b.every((x) => x === 0x11));
    } finally {
      await g2.closeAll();
      await peer4.stop();
    }
  },
));

test('open-timeout waits for a server that is not up yet; options are checked like QEMU', async () => {
  const dir = tempDir();
  const g = createGraph();
  try {
    const opening = openNbd(g, dir.file('late.sock'), { 'open-timeout': 10 });
    const peer = await nbdkit(dir.file('late.sock'), dir.file('late.pid'), ['-e', 'disk', 'memory', '1M']);
    try {
      const node = await opening;
      assert.equal(node.size, MiB);
      await assert.rejects(openNbd(g, dir.file('late.sock'), { 'tls-creds': 'tls0' }), /TLS is not supported/);
      await assert.rejects(openNbd(g, dir.file('late.sock'), { 'x-dirty-bitmap': 'qemu:dirty-bitmap:b' }), /x-dirty-bitmap/);
      await assert.rejects(g.open({ driver: 'nbd', server: { type: 'inet', host: '127.0.0.1' }, path: '/x' }), /at the same time/);
      await assert.rejects(g.open({ driver: 'nbd', server: { type: 'unix', path: '/x', bogus: 1 } }), /'server.bogus' is unexpected/);
      await assert.rejects(openNbd(g, dir.file('missing.sock')), /Failed to connect to 'unix:.*missing.sock': No such file or directory/);
    } finally {
      await g.closeAll();
      await peer.stop();
    }
  } finally {
    dir.cleanup();
  }
});

test('a read-only export opens read-only and refuses a read-write open', () => withPeer(
  (dir) => qemuNbd(sparseFile(dir.file('ro.raw'), MiB), dir.file('ro.sock'), dir.file('ro.pid'), ['-r']),
  async (g, dir) => {
    await assert.rejects(openNbd(g, dir.file('ro.sock')), /NBD export is read-only/);
    const node = await g.open({ driver: 'nbd', server: { type: 'unix', path: dir.file('ro.sock') }, export: 'disk', 'read-only': true });
    await node.read(0, Buffer.alloc(512));
  },
));

test('colo-blk client against colo-blk server over TCP, with the legacy flat keys and a URI filename', async () => {
  const serverGraph = createGraph();
  const g = createGraph();
  const mem = await serverGraph.add({ driver: 'memory', 'node-name': 'mem', size: SIZE });
  const server = new NbdServer();
  server.addExport({ name: 'parent0', node: mem, writable: true });
  const addr = await server.listen({ type: 'inet', host: '127.0.0.1', port: 0 });
  const port = addr.type === 'inet' ? addr.port : 0;
  try {
    const node = await g.open({ driver: 'nbd', host: '127.0.0.1', port: String(port), export: 'parent0' });
    const model = await exercise(node, SIZE);
    const viaUri = await g.open({ driver: 'nbd', filename: `nbd://127.0.0.1:${port}/parent0` });
    const all = Buffer.alloc(SIZE);
    await viaUri.read(0, all);
    assert.ok(all.equals(model));
    const st = await viaUri.blockStatus(60 * MiB, 4 * MiB);
    assert.deepEqual([st.length, st.flags], [4 * MiB, Status.ZERO | Status.ALLOCATED], 'a hole on the server is zero, not data');
    await assert.rejects(g.open({ driver: 'nbd', filename: `nbd://127.0.0.1:${port}/nope` }),
      /Requested export not available \(server reported: export 'nope' not present\)/);
  } finally {
    await g.closeAll();
    await server.close();
    await serverGraph.closeAll();
  }
});
