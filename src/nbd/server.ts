/**
 * The NBD server: listens on TCP or a unix socket, hands each client to a
 * ServerConnection, and keeps the exports they can choose from. Exports and
 * the listener are independent (as with QEMU's nbd-server-start and
 * block-export-add), so exports can come and go while the server runs.
 */
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import * as net from 'node:net';
import { BlockError } from '../block/errors.js';
import { rootLogger, type Logger } from '../util/log.js';
import { describe, type SocketAddress } from './address.js';
import { primeAllocator } from './allocator.js';
import { DEFAULT_MAX_PAYLOAD } from './constants.js';
import { NbdExport, type ExportOptions } from './export.js';
import type { BlockSizes, ExportCatalog, Session } from './negotiation.js';
import { ServerConnection, type ConnectionHost, type ConnectionInfo, type ConnectionLimits } from './server-connection.js';

export interface NbdServerOptions extends Partial<ConnectionLimits> {
  /** 0 = unlimited. Connections beyond the limit are closed at once. */
  maxConnections?: number;
  logger?: Logger;
}

export const DEFAULT_LIMITS: ConnectionLimits = {
  maxPayload: DEFAULT_MAX_PAYLOAD,
  maxDrain: 64 * 1024 * 1024,
  maxOptionLength: 64 * 1024,
  maxInFlight: 16,
  maxInFlightBytes: 64 * 1024 * 1024,
  maxQueuedReplyBytes: 64 * 1024 * 1024,
  handshakeTimeoutMs: 10_000,
  closeTimeoutMs: 5_000,
};

export type RemoveMode = 'safe' | 'hard';

export type ServerEvent =
  | { type: 'connect'; conn: ConnectionInfo }
  | { type: 'disconnect'; conn: ConnectionInfo };

export class NbdServer implements ConnectionHost, ExportCatalog {
  readonly limits: ConnectionLimits;
  readonly blockSizes: BlockSizes;
  private readonly exports = new Map<string, NbdExport>();
  private readonly connections = new Set<ServerConnection>();
  private readonly byExport = new Map<NbdExport, Set<ServerConnection>>();
  private listener: net.Server | null = null;
  private unixPath: string | null = null;
  private nextConnId = 1;
  private readonly listeners = new Set<(e: ServerEvent) => void>();
  private readonly log: Logger;
  readonly maxConnections: number;

  constructor(options: NbdServerOptions = {}) {
    this.limits = { ...DEFAULT_LIMITS };
    for (const key of Object.keys(DEFAULT_LIMITS) as Array<keyof ConnectionLimits>) {
      const v = options[key];
      if (v !== undefined) {
        if (!Number.isSafeInteger(v) || v <= 0) throw new BlockError('EINVAL', `NBD server limit ${key} must be a positive integer`);
        this.limits[key] = v;
      }
    }
    if (this.limits.maxPayload > 0xffffffff) throw new BlockError('EINVAL', 'maxPayload must fit in 32 bits');
    this.maxConnections = options.maxConnections ?? 0;
    this.log = (options.logger ?? rootLogger).child({ component: 'nbd-server' });
    this.blockSizes = { minimum: 1, preferred: 4096, maximum: this.limits.maxPayload };
  }

  /** Connection events (for monitors and tests); returns the unsubscribe function. */
  onEvent(listener: (e: ServerEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(e: ServerEvent): void {
    for (const l of this.listeners) l(e);
  }

  // ---------------------------------------------------------------- listener

  get listening(): boolean {
    return this.listener !== null;
  }

  /** The bound address (with the real port when 0 was asked for). */
  get address(): SocketAddress | null {
    const addr = this.listener?.address();
    if (!addr) return null;
    if (typeof addr === 'string') return { type: 'unix', path: addr };
    return { type: 'inet', host: addr.address, port: addr.port };
  }

  async listen(addr: SocketAddress): Promise<SocketAddress> {
    if (this.listener) throw new BlockError('EBUSY', 'NBD server already running');
    primeAllocator();
    // Paused on accept: the connection moves the socket's handle to one that reads into its own buffers.
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => this.accept(s));
    if (this.maxConnections > 0) server.maxConnections = this.maxConnections;
    // Like QEMU, replace a stale socket left by a previous run, but never a
    // regular file and never the socket of a server that still answers.
    const stale = addr.type === 'unix' && existsSync(addr.path) && lstatSync(addr.path).isSocket();
    if (stale && await answers(addr.path)) {
      throw new BlockError('EBUSY', `Failed to listen on ${describe(addr)}: another server answers there`);
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (addr.type === 'unix') {
        if (stale) unlinkSync(addr.path);
        server.listen(addr.path, () => resolve());
      } else {
        const port = typeof addr.port === 'string' ? Number(addr.port) : addr.port;
        if (!Number.isInteger(port) || port < 0 || port > 65535) {
          reject(new BlockError('EINVAL', `invalid port '${String(addr.port)}'`));
          return;
        }
        server.listen({ host: addr.host, port }, () => resolve());
      }
    }).catch((err: unknown) => {
      throw BlockError.from(err, `Failed to listen on ${describe(addr)}`);
    });
    server.on('error', (err) => this.log.error('nbd.listener-error', { error: err }));
    this.listener = server;
    this.unixPath = addr.type === 'unix' ? addr.path : null;
    const bound = this.address!;
    this.log.info('nbd.listening', { address: describe(bound) });
    return bound;
  }

  /**
   * Stops listening and ends every connection (gracefully: requests in flight
   * finish and are answered first, unless `hard`). Exports stay defined.
   */
  async close(options: { hard?: boolean } = {}): Promise<void> {
    const listener = this.listener;
    this.listener = null;
    const closing = listener ? new Promise<void>((resolve) => listener.close(() => resolve())) : Promise.resolve();
    const conns = [...this.connections];
    for (const c of conns) c.shutdown('server shutting down', options.hard ?? false);
    await Promise.all(conns.map((c) => c.closed));
    await closing;
    if (this.unixPath && existsSync(this.unixPath)) {
      try { unlinkSync(this.unixPath); } catch { /* already gone */ }
    }
    this.unixPath = null;
    if (listener) this.log.info('nbd.stopped', {});
  }

  // ------------------------------------------------------------------ exports

  addExport(options: ExportOptions): NbdExport {
    if (this.exports.has(options.name)) throw new BlockError('EEXIST', `NBD export '${options.name}' already exists`);
    if (Buffer.byteLength(options.name, 'utf8') > 4096) throw new BlockError('EINVAL', 'export name longer than 4096 bytes');
    const exp = new NbdExport(options);
    this.exports.set(exp.name, exp);
    this.byExport.set(exp, new Set());
    this.log.info('nbd.export-added', { export: exp.name, node: exp.node.nodeName, writable: exp.writable, size: exp.size });
    return exp;
  }

  getExport(name: string): NbdExport | undefined {
    return this.exports.get(name);
  }

  exportList(): NbdExport[] {
    return [...this.exports.values()];
  }

  /**
   * Removes an export. 'safe' refuses while clients use it; 'hard' drops
   * them (their requests in flight still finish on the node) and then removes it.
   */
  async removeExport(name: string, mode: RemoveMode = 'safe'): Promise<void> {
    const exp = this.exports.get(name);
    if (!exp) throw new BlockError('ENOENT', `Export '${name}' is not found`);
    const users = this.byExport.get(exp)!;
    if (mode === 'safe' && users.size > 0) {
      throw new BlockError('EBUSY', `export '${name}' still in use`);
    }
    this.exports.delete(name);
    const conns = [...users];
    for (const c of conns) c.shutdown(`export '${name}' removed`, true);
    await Promise.all(conns.map((c) => c.closed));
    this.byExport.delete(exp);
    exp.release();
    this.log.info('nbd.export-removed', { export: name, mode, dropped: conns.length });
  }

  connectionList(): ConnectionInfo[] {
    return [...this.connections].map((c) => c.info());
  }

  // ------------------------------------------------------- ExportCatalog/host

  get catalog(): ExportCatalog {
    return this;
  }

  find(name: string): NbdExport | undefined {
    return this.exports.get(name);
  }

  list(): Iterable<NbdExport> {
    return this.exports.values();
  }

  exportFor(session: Session): NbdExport | undefined {
    const exp = this.exports.get(session.export.name);
    return exp === session.export ? exp : undefined;
  }

  attach(conn: ServerConnection, exp: NbdExport): void {
    this.byExport.get(exp)?.add(conn);
    exp.stats.connections++;
  }

  detach(conn: ServerConnection): void {
    for (const [exp, set] of this.byExport) {
      if (set.delete(conn)) exp.stats.connections--;
    }
  }

  private accept(socket: net.Socket): void {
    if (!this.listener) {
      socket.destroy();
      return;
    }
    const id = this.nextConnId++;
    const conn = new ServerConnection(id, socket, this, this.limits, this.log);
    this.connections.add(conn);
    this.log.info('nbd.connect', { conn: id, remote: conn.remote });
    this.emit({ type: 'connect', conn: conn.info() });
    void conn.closed.then(() => {
      this.connections.delete(conn);
      this.emit({ type: 'disconnect', conn: conn.info() });
    });
  }
}

/** Whether something accepts connections on a unix socket. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => { probe.destroy(); resolve(true); });
    probe.once('error', () => resolve(false));
  });
}
