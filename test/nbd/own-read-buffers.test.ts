/**
 * The accepted socket's handle moved into a socket that reads into buffers
 * the connection chooses: bytes land where the reader asked, the stream's
 * order is kept across direct and slab reads, and the listener still counts
 * the connection until it closes.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { once } from 'node:events';
import { test } from 'node:test';
import { adoptWithOwnBuffers } from '../../src/nbd/own-read-buffers.js';

interface Received {
  header: Buffer;
  payload: Buffer;
  directBytes: number;
  slabReads: number;
}

/**
 * A toy framing: a 4-byte length, then that many payload bytes read straight
 * into their own buffer once the header is known.
 */
function frameReader(done: (r: Received) => void): Parameters<typeof adoptWithOwnBuffers>[1] {
  let pending = Buffer.alloc(0);
  let payload: Buffer | null = null;
  let filled = 0;
  let directBytes = 0;
  let slabReads = 0;
  const finishIfFull = (): void => {
    if (payload && filled === payload.length) done({ header: pending.subarray(0, 4), payload, directBytes, slabReads });
  };
  return {
    target: () => (payload && filled < payload.length ? payload.subarray(filled) : null),
    arrived: (n, buf, direct) => {
      if (direct) {
        directBytes += n;
        filled += n;
        finishIfFull();
        return;
      }
      slabReads++;
      const bytes = Buffer.from(buf.subarray(0, n));
      if (payload) {
        // Bytes after the frame are not expected in this test.
        assert.fail('slab read while a payload was being filled');
      }
      pending = Buffer.concat([pending, bytes]);
      if (pending.length >= 4) {
        payload = Buffer.alloc(pending.readUInt32BE(0));
        filled = pending.copy(payload, 0, 4);
        finishIfFull();
      }
    },
  };
}

test('a payload announced by its header is read straight into its own buffer, in order', async () => {
  const size = 4 << 20;
  const data = randomBytes(size);
  const received = new Promise<Received>((resolve) => {
    const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
      const own = adoptWithOwnBuffers(accepted, frameReader((r) => {
        own!.end();
        server.close();
        resolve(r);
      }));
      assert.ok(own, 'the accepted socket has a handle to move');
    });
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      const client = net.connect(port, '127.0.0.1', () => {
        const header = Buffer.alloc(4);
        header.writeUInt32BE(size);
        // Many small writes: the header and the payload's start share the first read.
        client.write(header);
        for (let at = 0; at < size; at += 100_000) client.write(data.subarray(at, Math.min(size, at + 100_000)));
      });
      client.on('error', () => {});
      client.resume();
    });
  });
  const r = await received;
  assert.equal(r.header.readUInt32BE(0), size);
  assert.ok(r.payload.equals(data), 'payload arrived intact and in order');
  assert.ok(r.directBytes > size / 2, `most bytes went straight into the payload (${r.directBytes} of ${size})`);
});

test('the listener counts an adopted connection until it closes, so close() and maxConnections still work', async () => {
  const server = net.createServer({ pauseOnConnect: true });
  server.maxConnections = 1;
  const adopted: net.Socket[] = [];
  let firstAdopted!: () => void;
  const adoptedOnce = new Promise<void>((resolve) => { firstAdopted = resolve; });
  server.on('connection', (accepted) => {
    const own = adoptWithOwnBuffers(accepted, { target: () => null, arrived: () => {} });
    adopted.push(own!);
    firstAdopted();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const first = net.connect(port, '127.0.0.1');
  await once(first, 'connect');
  await adoptedOnce;

  // Over the limit: the listener drops the second client at once.
  const second = net.connect(port, '127.0.0.1');
  second.on('error', () => {});
  second.resume();
  await once(second, 'close');
  assert.equal(adopted.length, 1);

  let closed = false;
  const serverClosed = new Promise<void>((resolve) => server.close(() => { closed = true; resolve(); }));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(closed, false, 'close() waits for the adopted connection');
  const gone = once(first, 'close');
  adopted[0]!.destroy();
  first.resume();
  await gone;
  await serverClosed;
});
