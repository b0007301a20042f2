/**
 * Plumbing for the control-plane tests: a QMP server over a temporary unix
 * socket, and a raw line-oriented client for looking at exact bytes.
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { buildRegistry, type ControlDeps } from '../../src/control/commands/index.js';
import { QmpError } from '../../src/control/errors.js';
import { EventHub } from '../../src/control/events.js';
import { QmpClient } from '../../src/control/qmp-client.js';
import { QmpServer, type QmpServerOptions } from '../../src/control/server.js';
import { createGraph } from '../../src/drivers/index.js';
import { tempDir } from '../helpers/env.js';

export interface TestServer {
  server: QmpServer;
  events: EventHub;
  path: string;
  deps: ControlDeps;
  close(): Promise<void>;
}

export async function startServer(deps: Partial<ControlDeps> = {}, options: Partial<QmpServerOptions> = {}): Promise<TestServer> {
  const dir = tempDir('colo-blk-qmp-');
  const path = dir.file('qmp.sock');
  const full: ControlDeps = { graph: createGraph(), ...deps };
  const events = options.events ?? new EventHub();
  const server = new QmpServer({ registry: buildRegistry(full), events, ...options });
  await server.listen({ path });
  return {
    server,
    events,
    path,
    deps: full,
    async close() {
      await server.close();
      events.close();
      await full.graph.closeAll();
      dir.cleanup();
    },
  };
}

/** A client that sends raw bytes and reads CRLF-terminated lines. */
export class RawClient {
  private buffered = '';
  private readonly lines: string[] = [];
  private waiters: Array<(line: string | null) => void> = [];
  private ended = false;

  private constructor(readonly socket: net.Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buffered += d;
      let start = 0;
      for (let i = this.buffered.indexOf('\r\n'); i >= 0; i = this.buffered.indexOf('\r\n', start)) {
        this.push(this.buffered.slice(start, i));
        start = i + 2;
      }
      this.buffered = this.buffered.slice(start);
    });
    socket.on('close', () => {
      this.ended = true;
      for (const w of this.waiters.splice(0)) w(null);
    });
    socket.on('error', () => undefined);
  }

  static connect(address: string | { host: string; port: number }): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = typeof address === 'string' ? net.connect(address) : net.connect(address.port, address.host);
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  /** Connects, checks the greeting and negotiates. */
  static async negotiated(path: string): Promise<RawClient> {
    const c = await RawClient.connect(path);
    const greeting = await c.next();
    if (!greeting.startsWith('{"QMP": ')) throw new Error(`unexpected greeting ${greeting}`);
    c.send('{"execute":"qmp_capabilities"}');
    const r = await c.next();
    if (r !== '{"return": {}}') throw new Error(`negotiation failed: ${r}`);
    return c;
  }

  private push(line: string): void {
    const w = this.waiters.shift();
    if (w) w(line);
    else this.lines.push(line);
  }

  send(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** The next line; rejects if the connection closes first. */
  async next(): Promise<string> {
    const line = await this.nextOrEnd();
    if (line === null) throw new Error('connection closed');
    return line;
  }

  nextOrEnd(): Promise<string | null> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Lines up to and including the reply with this id (a marker sent after the input under test). */
  async until(id: string): Promise<string[]> {
    const out: string[] = [];
    for (;;) {
      const line = await this.next();
      // QEMU's member order puts the id last in a success and first in an error.
      if (line.endsWith(`, "id": "${id}"}`) || line.startsWith(`{"id": "${id}", `)) return out;
      out.push(line);
    }
  }

  /** Resolves when the server has closed the connection. */
  async closedByPeer(): Promise<void> {
    while ((await this.nextOrEnd()) !== null) { /* drain */ }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A promise and the functions that settle it, for handlers that must wait on the test. */
export function deferred<T = void>(): { promise: Promise<T>; resolve(v: T): void; reject(e: unknown): void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => { resolve = res; reject = rej; });
  return { promise, resolve, reject };
}

/** Asserts that a command failed with this error class and description. */
export async function rejectsQmp(p: Promise<unknown>, errorClass: string, desc: string | RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof QmpError, `expected a QmpError, got ${String(err)}`);
    assert.equal(err.class, errorClass);
    if (typeof desc === 'string') assert.equal(err.desc, desc);
    else assert.match(err.desc, desc);
    return true;
  });
}

export function client(path: string): Promise<QmpClient> {
  return QmpClient.connect(path);
}
