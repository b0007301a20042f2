/**
 * In-process NBD servers for socket-level tests, and a node whose requests
 * a test can hold, release or fail.
 */
import { BlockNode, type BlockStatus } from '../../src/block/node.js';
import type { BlockGraph } from '../../src/block/graph.js';
import { createGraph } from '../../src/drivers/index.js';
import { NbdClient, type ClientOptions } from '../../src/nbd/client.js';
import { NbdServer, type NbdServerOptions, type ServerEvent } from '../../src/nbd/server.js';
import { patternBuffer } from '../helpers/env.js';

export type Hook = (op: string, offset: number, length: number, flags: number) => Promise<void> | void;

/** Passes everything to `inner` after `hook`, which may wait or throw. */
export class ScriptedNode extends BlockNode {
  readonly driver = 'scripted';
  hook: Hook = () => undefined;

  constructor(name: string, private readonly inner: BlockNode) {
    super(name, false);
    this.setChild('file', inner);
  }

  override get size(): number {
    return this.inner.size;
  }

  protected async doRead(offset: number, buf: Buffer): Promise<void> {
    await this.hook('read', offset, buf.length, 0);
    await this.inner.read(offset, buf);
  }

  protected async doWrite(offset: number, buf: Buffer, flags: number): Promise<void> {
    await this.hook('write', offset, buf.length, flags);
    await this.inner.write(offset, buf, flags);
  }

  protected override async doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    await this.hook('zero', offset, length, flags);
    await this.inner.writeZeroes(offset, length, flags);
  }

  protected override async doDiscard(offset: number, length: number): Promise<void> {
    await this.hook('discard', offset, length, 0);
    await this.inner.discard(offset, length);
  }

  protected async doFlush(): Promise<void> {
    await this.hook('flush', 0, 0, 0);
    await this.inner.flush();
  }

  protected override async doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    await this.hook('status', offset, length, 0);
    const st = await this.inner.blockStatus(offset, length);
    return st;
  }
}

/** A promise with its resolve, for holding a request until the test says so. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => { open = r; });
  return { promise, open };
}

export const SIZE = 4 * 1024 * 1024;

export interface TestServer {
  server: NbdServer;
  port: number;
  graph: BlockGraph;
  node: ScriptedNode;
  /** What the `disk` export must contain. */
  expected: Buffer;
  connect(options?: Partial<ClientOptions>): Promise<NbdClient>;
  /** Resolves at the next disconnect event. */
  nextDisconnect(): Promise<ServerEvent>;
  close(): Promise<void>;
}

/**
 * A server with export `disk` (writable, a scripted node over 4 MiB of memory
 * holding a pattern) and `ro` (read-only view of the same node).
 */
export async function startServer(options: NbdServerOptions = {}): Promise<TestServer> {
  const graph = createGraph();
  const mem = await graph.add({ driver: 'memory', 'node-name': 'mem', size: SIZE });
  const expected = patternBuffer(SIZE, 7);
  await mem.write(0, expected);
  const node = new ScriptedNode('scripted', mem);
  const server = new NbdServer({ handshakeTimeoutMs: 2000, ...options });
  server.addExport({ name: 'disk', node, writable: true, description: 'scripted memory' });
  server.addExport({ name: 'ro', node, writable: false });
  const addr = await server.listen({ type: 'inet', host: '127.0.0.1', port: 0 });
  const port = addr.type === 'inet' ? Number(addr.port) : 0;
  const clients: NbdClient[] = [];
  return {
    server,
    port,
    graph,
    node,
    expected,
    async connect(o = {}) {
      const c = await NbdClient.connect({ type: 'inet', host: '127.0.0.1', port }, { exportName: 'disk', ...o });
      clients.push(c);
      return c;
    },
    nextDisconnect() {
      return new Promise((resolve) => {
        const off = server.onEvent((e) => {
          if (e.type === 'disconnect') {
            off();
            resolve(e);
          }
        });
      });
    },
    async close() {
      for (const c of clients) c.destroy();
      await server.close({ hard: true });
      node.hook = () => undefined;
      await graph.closeAll();
    },
  };
}

/** Reads the whole export through a fresh, well-behaved client and compares it. */
export async function assertServesExpected(t: TestServer): Promise<void> {
  const c = await t.connect();
  const buf = Buffer.alloc(SIZE);
  const piece = 64 * 1024;
  await Promise.all(Array.from({ length: SIZE / piece }, (_, i) => c.read(i * piece, buf.subarray(i * piece, (i + 1) * piece))));
  await c.close();
  if (!buf.equals(t.expected)) {
    let i = 0;
    while (buf[i] === t.expected[i]) i++;
    throw new Error(`export content differs from the expected image at offset ${i}`);
  }
}
