/**
 * The QMP server: unix and TCP listeners, any number of clients at once,
 * one dispatcher that runs their commands in turn, and the event hub's
 * events fanned out to every client that has negotiated.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { Logger, rootLogger } from '../util/log.js';
import { Dispatcher } from './dispatcher.js';
import type { EventHub, QmpEvent } from './events.js';
import type { JsonLimits } from './json-stream.js';
import { writeJson } from './json-write.js';
import type { CommandRegistry } from './registry.js';
import { QmpSession, type SessionTransport } from './session.js';
import { versionInfo, type VersionInfo } from './version.js';

export type QmpListenAddress = { path: string } | { host: string; port: number };

export interface QmpServerOptions {
  registry: CommandRegistry;
  events?: EventHub;
  version?: VersionInfo;
  limits?: Partial<JsonLimits>;
  /** Connections beyond this are closed at once (default 64). */
  maxClients?: number;
  /** A client that leaves more than this unread is disconnected (default 16 MiB). */
  maxOutputBytes?: number;
  log?: Logger;
}

/** How long a closing connection may take to hand over its last replies. */
const FLUSH_TIMEOUT_MS = 5000;

class SocketTransport implements SessionTransport {
  constructor(private readonly socket: net.Socket) {}

  write(text: string): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(text, 'latin1');
  }

  get pendingOutput(): number {
    return this.socket.writableLength;
  }

  pauseInput(): void {
    this.socket.pause();
  }

  resumeInput(): void {
    this.socket.resume();
  }

  close(flush: boolean): void {
    if (this.socket.destroyed) return;
    if (!flush) {
      this.socket.destroy();
      return;
    }
    // Flush what is queued (the reply to `quit`), then let go of the socket,
    // even if the client never reads it.
    this.socket.once('finish', () => this.socket.destroy());
    setTimeout(() => this.socket.destroy(), FLUSH_TIMEOUT_MS).unref();
    this.socket.end();
  }
}

export class QmpServer {
  private readonly servers: net.Server[] = [];
  private readonly unixPaths: string[] = [];
  private readonly sessions = new Set<QmpSession>();
  private readonly sockets = new Set<net.Socket>();
  private readonly dispatcher: Dispatcher;
  private readonly log: Logger;
  private readonly unsubscribe: (() => void) | undefined;
  private closing = false;

  constructor(private readonly options: QmpServerOptions) {
    this.log = options.log ?? rootLogger.child({ component: 'qmp' });
    this.dispatcher = new Dispatcher(options.registry, this.log);
    this.unsubscribe = options.events?.subscribe((ev) => this.broadcast(ev));
  }

  get clientCount(): number {
    return this.sessions.size;
  }

  /** Starts listening; resolves with the bound address (the port, when 0 was asked for). */
  async listen(address: QmpListenAddress): Promise<QmpListenAddress> {
    const server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
    if ('path' in address) await removeStaleSocket(address.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('path' in address) server.listen(address.path, () => resolve());
      else server.listen(address.port, address.host, () => resolve());
    });
    server.on('error', (err) => this.log.error('qmp.listener_error', { error: err }));
    this.servers.push(server);
    if ('path' in address) {
      this.unixPaths.push(address.path);
      this.log.info('qmp.listening', { path: address.path });
      return address;
    }
    const bound = server.address() as net.AddressInfo;
    this.log.info('qmp.listening', { host: bound.address, port: bound.port });
    return { host: bound.address, port: bound.port };
  }

  /** Serves a socket connected by other means (an inherited or paired socket). */
  accept(socket: net.Socket): void {
    const max = this.options.maxClients ?? 64;
    if (this.closing || this.sessions.size >= max) {
      this.log.warn('qmp.client_refused', { reason: this.closing ? 'closing' : 'too many clients', max });
      socket.destroy();
      return;
    }
    if (socket.remoteFamily === 'IPv4' || socket.remoteFamily === 'IPv6') socket.setNoDelay(true);
    const session = new QmpSession(new SocketTransport(socket), this.dispatcher, {
      greeting: { QMP: { version: this.options.version ?? versionInfo(), capabilities: [] } },
      limits: this.options.limits,
      maxOutputBytes: this.options.maxOutputBytes,
      log: this.log,
    });
    this.sessions.add(session);
    this.sockets.add(socket);
    session.log.debug('qmp.client_connected', { peer: socket.remoteAddress ?? 'unix' });
    socket.on('data', (chunk: Buffer) => {
      try {
        session.receive(chunk);
      } catch (err) {
        session.log.error('qmp.input_failed', { error: err, stack: err instanceof Error ? err.stack : undefined });
        session.close(false);
      }
    });
    socket.on('error', (err) => session.log.debug('qmp.client_error', { error: err }));
    socket.on('end', () => session.endInput());
    socket.on('close', () => {
      this.sockets.delete(socket);
      this.sessions.delete(session);
      session.close();
      session.log.debug('qmp.client_disconnected');
    });
    session.start();
  }

  /** Resolves when no command is queued or running. */
  idle(): Promise<void> {
    return this.dispatcher.idle();
  }

  /**
   * Stops listening and disconnects every client, after handing over what
   * was already queued to them (the reply to the `quit` that led here).
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.unsubscribe?.();
    const listeners = this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    const sockets = [...this.sockets].map((s) => (s.destroyed ? Promise.resolve() : new Promise<void>((resolve) => s.once('close', () => resolve()))));
    for (const session of this.sessions) session.close(true);
    await Promise.all([...listeners, ...sockets]);
    for (const p of this.unixPaths) fs.rmSync(p, { force: true });
  }

  private broadcast(ev: QmpEvent): void {
    const line = `${writeJson(ev)}\r\n`;
    for (const s of this.sessions) s.sendEvent(line);
  }
}

/**
 * A unix socket file left by a process that died would make listen fail.
 * Remove it, but only if it is a socket nobody answers on: never a regular
 * file, never a live server's socket.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`cannot listen on ${path}: it exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => { probe.destroy(); resolve(true); });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`cannot listen on ${path}: another server is listening there`);
  fs.rmSync(path, { force: true });
}
