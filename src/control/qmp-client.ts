/**
 * A QMP client: connects to a unix or TCP socket (QEMU or colo-blk),
 * reads the greeting, negotiates, and runs commands, returning their result
 * or throwing QmpError {class, desc}. Commands may be issued concurrently;
 * replies are matched by id. Events are kept in a bounded buffer and can be
 * awaited, so a test can wait for an event that arrived before it asked.
 */
import * as net from 'node:net';
import { QmpError, isQmpErrorClass } from './errors.js';
import type { QmpEvent } from './events.js';
import { JsonMessageStream } from './json-stream.js';
import { isQmpObject, toPlain, type QmpObject } from './json-value.js';
import { writeJson } from './json-write.js';
import type { VersionInfo } from './version.js';

export type QmpClientAddress = string | { path: string } | { host: string; port: number };

export interface QmpClientOptions {
  /** Keep retrying while the socket does not exist or refuses (a daemon starting up). Default 0. */
  waitMs?: number;
  /** Time allowed for connecting, the greeting and negotiation. Default 10 s. */
  connectTimeoutMs?: number;
  /** Default time allowed for each command; 0 (default) waits forever. */
  commandTimeoutMs?: number;
  /** Send qmp_capabilities after the greeting (default true). */
  negotiate?: boolean;
  /** Events kept for waitForEvent (default 1024; the oldest are dropped). */
  eventBuffer?: number;
}

export interface QmpGreeting {
  version: VersionInfo;
  capabilities: string[];
}

/** The connection failed, closed, timed out, or the peer does not speak QMP. */
export class QmpTransportError extends Error {
  constructor(readonly code: 'closed' | 'timeout' | 'protocol' | 'connect', message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QmpTransportError';
  }
}

interface Pending {
  id: string;
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | undefined;
  /** Timed out: its reply, if it ever comes, is dropped. */
  abandoned: boolean;
}

interface EventWaiter {
  name: string;
  match(ev: QmpEvent): boolean;
  resolve(ev: QmpEvent): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | undefined;
}

export class QmpClient {
  private readonly stream = new JsonMessageStream();
  private readonly pending: Pending[] = [];
  private readonly events: QmpEvent[] = [];
  private readonly eventWaiters: EventWaiter[] = [];
  private readonly listeners = new Set<(ev: QmpEvent) => void>();
  private greetingValue: QmpGreeting | null = null;
  private greetingWaiter: { resolve(g: QmpGreeting): void; reject(e: Error): void } | null = null;
  private nextId = 1;
  private closedError: QmpTransportError | null = null;
  private readonly closeWaiters: Array<() => void> = [];

  private constructor(private readonly socket: net.Socket, private readonly options: QmpClientOptions) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new QmpTransportError('closed', `QMP connection failed: ${err.message}`, { cause: err })));
    socket.on('close', () => this.fail(new QmpTransportError('closed', 'QMP connection closed')));
  }

  /** Connects, reads the greeting and (unless told not to) negotiates capabilities. */
  static async connect(address: QmpClientAddress, options: QmpClientOptions = {}): Promise<QmpClient> {
    const timeout = options.connectTimeoutMs ?? 10_000;
    const socket = await connectSocket(address, options.waitMs ?? 0, timeout);
    // The greeting and negotiation get their own allowance, however long the socket took to appear.
    const deadline = Date.now() + timeout;
    const client = new QmpClient(socket, options);
    try {
      await withTimeout(client.waitGreeting(), deadline - Date.now(), 'QMP greeting');
      if (options.negotiate ?? true) {
        await withTimeout(client.execute('qmp_capabilities'), deadline - Date.now(), 'qmp_capabilities');
      }
    } catch (err) {
      client.socket.destroy();
      throw err;
    }
    return client;
  }

  get greeting(): QmpGreeting {
    if (!this.greetingValue) throw new QmpTransportError('protocol', 'no QMP greeting yet');
    return this.greetingValue;
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  /**
   * Runs a command. Resolves with its `return` (floats as numbers, integers
   * as numbers when exact), rejects with QmpError on an error reply.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `colo-blk-${this.nextId++}`;
    const message: Record<string, unknown> = { execute: command };
    if (args !== undefined) message.arguments = args;
    message.id = id;
    let text: string;
    try {
      text = writeJson(message, { order: 'insertion' });
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<T>((resolve, reject) => {
      const entry: Pending = { id, command, resolve: resolve as (v: unknown) => void, reject, timer: undefined, abandoned: false };
      const ms = options.timeoutMs ?? this.options.commandTimeoutMs ?? 0;
      if (ms > 0) {
        entry.timer = setTimeout(() => {
          entry.abandoned = true;
          reject(new QmpTransportError('timeout', `QMP command ${command} timed out after ${ms} ms`));
        }, ms);
      }
      this.pending.push(entry);
      this.socket.write(`${text}\r\n`, 'latin1');
    });
  }

  /** Calls `listener` for every event from now on; returns the unsubscribe function. */
  onEvent(listener: (ev: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * The first buffered or future event with this name (and matching data),
   * which is removed from the buffer.
   */
  waitForEvent(name: string, options: { match?: (data: unknown) => boolean; timeoutMs?: number } = {}): Promise<QmpEvent> {
    const match = (ev: QmpEvent): boolean => ev.event === name && (options.match ? options.match(ev.data) : true);
    const i = this.events.findIndex(match);
    if (i >= 0) return Promise.resolve(this.events.splice(i, 1)[0]!);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      const w: EventWaiter = { name, match, resolve, reject, timer: undefined };
      if (options.timeoutMs) {
        w.timer = setTimeout(() => {
          this.eventWaiters.splice(this.eventWaiters.indexOf(w), 1);
          reject(new QmpTransportError('timeout', `no ${name} event within ${options.timeoutMs} ms`));
        }, options.timeoutMs);
      }
      this.eventWaiters.push(w);
    });
  }

  /** Removes and returns the buffered events. */
  takeEvents(): QmpEvent[] {
    return this.events.splice(0);
  }

  /** Closes the connection; commands still waiting are rejected. */
  async close(): Promise<void> {
    if (!this.closedError) {
      this.socket.end();
      this.socket.destroySoon();
    }
    if (this.closedError) return;
    await new Promise<void>((resolve) => this.closeWaiters.push(resolve));
  }

  /** Resolves when the peer has closed the connection (after `quit`, say). */
  waitClosed(): Promise<void> {
    if (this.closedError) return Promise.resolve();
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }

  // ---------------------------------------------------------------- input

  private waitGreeting(): Promise<QmpGreeting> {
    if (this.greetingValue) return Promise.resolve(this.greetingValue);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => { this.greetingWaiter = { resolve, reject }; });
  }

  private onData(chunk: Buffer): void {
    this.stream.write(chunk);
    for (let ev = this.stream.read(); ev; ev = this.stream.read()) {
      if (ev.kind === 'error') {
        this.protocolError(`unparsable message from QMP server: ${ev.message}`);
        return;
      }
      if (!isQmpObject(ev.value)) {
        this.protocolError('QMP server sent a message that is not an object');
        return;
      }
      this.onMessage(ev.value);
    }
  }

  private onMessage(msg: QmpObject): void {
    if (!this.greetingValue) {
      const qmp = msg.QMP;
      if (!isQmpObject(qmp)) {
        this.protocolError(`the peer did not greet with a QMP banner (it sent ${JSON.stringify(toPlain(msg)).slice(0, 120)})`);
        return;
      }
      const g = toPlain(qmp) as { version?: VersionInfo; capabilities?: string[] };
      this.greetingValue = { version: g.version ?? { qemu: { major: 0, minor: 0, micro: 0 }, package: '' }, capabilities: g.capabilities ?? [] };
      this.greetingWaiter?.resolve(this.greetingValue);
      this.greetingWaiter = null;
      return;
    }
    if (typeof msg.event === 'string') {
      this.onQmpEvent(toPlain(msg) as QmpEvent);
      return;
    }
    if ('return' in msg || 'error' in msg) {
      this.onReply(msg);
      return;
    }
    this.protocolError('QMP server sent a message that is neither a reply nor an event');
  }

  private onReply(msg: QmpObject): void {
    // Replies come in request order; the id confirms it (and parse errors carry none).
    const index = typeof msg.id === 'string' ? this.pending.findIndex((p) => p.id === msg.id) : 0;
    if (index < 0) return;
    const entry = this.pending.splice(index, 1)[0];
    if (!entry) return;
    if (entry.timer) clearTimeout(entry.timer);
    if (entry.abandoned) return;
    if ('error' in msg) {
      const e = toPlain(msg.error!) as { class?: unknown; desc?: unknown };
      const cls = typeof e.class === 'string' && isQmpErrorClass(e.class) ? e.class : 'GenericError';
      entry.reject(new QmpError(cls, typeof e.desc === 'string' ? e.desc : JSON.stringify(e)));
    } else {
      entry.resolve(toPlain(msg.return!));
    }
  }

  private onQmpEvent(ev: QmpEvent): void {
    for (const l of this.listeners) l(ev);
    const w = this.eventWaiters.findIndex((x) => x.match(ev));
    if (w >= 0) {
      const waiter = this.eventWaiters.splice(w, 1)[0]!;
      if (waiter.timer) clearTimeout(waiter.timer);
      waiter.resolve(ev);
      return;
    }
    this.events.push(ev);
    const max = this.options.eventBuffer ?? 1024;
    if (this.events.length > max) this.events.splice(0, this.events.length - max);
  }

  private protocolError(message: string): void {
    this.fail(new QmpTransportError('protocol', message));
    this.socket.destroy();
  }

  private fail(err: QmpTransportError): void {
    if (this.closedError) return;
    this.closedError = err;
    this.greetingWaiter?.reject(err);
    this.greetingWaiter = null;
    for (const p of this.pending.splice(0)) {
      if (p.timer) clearTimeout(p.timer);
      if (!p.abandoned) p.reject(err);
    }
    for (const w of this.eventWaiters.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(err);
    }
    for (const c of this.closeWaiters.splice(0)) c();
  }
}

function connectOnce(address: QmpClientAddress, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = typeof address === 'string'
      ? net.connect(address)
      : 'path' in address ? net.connect(address.path) : net.connect(address.port, address.host);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new QmpTransportError('timeout', `connect timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      if (typeof address !== 'string' && 'host' in address) socket.setNoDelay(true);
      resolve(socket);
    });
    const onError = (err: Error): void => {
      clearTimeout(timer);
      reject(err);
    };
    socket.once('error', onError);
  });
}

async function connectSocket(address: QmpClientAddress, waitMs: number, timeoutMs: number): Promise<net.Socket> {
  const deadline = Date.now() + waitMs;
  for (let delay = 10; ; delay = Math.min(delay * 2, 200)) {
    try {
      return await connectOnce(address, timeoutMs);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const retryable = code === 'ENOENT' || code === 'ECONNREFUSED';
      if (!retryable || Date.now() + delay > deadline) {
        const where = typeof address === 'string' ? address : 'path' in address ? address.path : `${address.host}:${address.port}`;
        throw new QmpTransportError('connect', `cannot connect to QMP socket ${where}: ${(err as Error).message}`, { cause: err });
      }
      // Bounded retry while a daemon creates its socket: there is no event to wait for.
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  if (!(ms > 0)) return Promise.reject(new QmpTransportError('timeout', `${what} timed out`));
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new QmpTransportError('timeout', `${what} timed out after ${ms} ms`)), ms);
    p.then((v) => { clearTimeout(timer); resolve(v); }, (e: unknown) => { clearTimeout(timer); reject(e); });
  });
}
