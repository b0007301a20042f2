/**
 * The storage daemon's core: the block graph, the NBD server and the
 * exports on it, with the operations qemu-storage-daemon offers on its
 * command line and over QMP (nbd-server-start/stop, block-export-add/del,
 * query-block-exports). The command line calls these methods; the QMP
 * monitor calls the same ones, so both behave alike.
 */
import { BlockError } from '../block/errors.js';
import type { BlockGraph } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import type { OptionDict } from '../block/options.js';
import { createGraph } from '../drivers/index.js';
import { describe, type SocketAddress } from '../nbd/address.js';
import type { ExportStats } from '../nbd/export.js';
import { NbdServer, type RemoveMode } from '../nbd/server.js';
import type { ConnectionInfo, ConnectionLimits } from '../nbd/server-connection.js';
import { rootLogger, type Logger } from '../util/log.js';

export interface NbdServerConfig {
  addr: SocketAddress;
  /** 0 or absent = unlimited. */
  maxConnections?: number;
  limits?: Partial<ConnectionLimits>;
}

export interface ExportConfig {
  /** The block-export id (QMP's `id`). */
  id: string;
  /** The node to export, or its node name. */
  node: BlockNode | string;
  /** The NBD export name; defaults to the node name, as in QEMU. */
  name?: string;
  writable?: boolean;
  description?: string;
  /** Flush every write before answering it. */
  writethrough?: boolean;
  /** Offer the `qemu:allocation-depth` context (off by default, as in QEMU). */
  allocationDepth?: boolean;
}

/** What query-block-exports shows, plus the NBD details and counters. */
export interface ExportInfo {
  id: string;
  type: 'nbd';
  nodeName: string;
  name: string;
  writable: boolean;
  description: string;
  /** Removal was requested and clients are still being shut down. */
  shuttingDown: boolean;
  stats: ExportStats;
}

export type DaemonEvent = { event: 'BLOCK_EXPORT_DELETED'; data: { id: string } };

export class Daemon {
  readonly graph: BlockGraph;
  private server: NbdServer | null = null;
  /** export id → export name on the server */
  private readonly exportsById = new Map<string, { name: string; removing: boolean }>();
  private readonly listeners = new Set<(e: DaemonEvent) => void>();
  private shuttingDown: Promise<void> | null = null;
  /** Nodes held by `pause`, or null while running. */
  private paused: BlockNode[] | null = null;
  private readonly log: Logger;

  constructor(options: { graph?: BlockGraph; logger?: Logger } = {}) {
    this.graph = options.graph ?? createGraph();
    this.log = (options.logger ?? rootLogger).child({ component: 'daemon' });
  }

  /** Subscribes to daemon events (QMP forwards them); returns the unsubscribe function. */
  onEvent(listener: (e: DaemonEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---------------------------------------------------------------- blockdevs

  addBlockdev(options: OptionDict): Promise<BlockNode> {
    return this.graph.add(options);
  }

  // --------------------------------------------------------------- NBD server

  get nbdServer(): NbdServer | null {
    return this.server;
  }

  get serverRunning(): boolean {
    return this.server !== null;
  }

  async startNbdServer(config: NbdServerConfig): Promise<SocketAddress> {
    if (this.server) throw new BlockError('EBUSY', 'NBD server already running');
    const server = new NbdServer({ ...config.limits, maxConnections: config.maxConnections ?? 0 });
    const bound = await server.listen(config.addr);
    this.server = server;
    return bound;
  }

  /** nbd-server-stop: ends every connection, removes every NBD export, stops listening. */
  async stopNbdServer(): Promise<void> {
    const server = this.server;
    if (!server) throw new BlockError('ENOENT', 'NBD server not running');
    this.server = null;
    await server.close();
    for (const [id, entry] of [...this.exportsById]) {
      await server.removeExport(entry.name, 'hard').catch(() => undefined);
      this.exportsById.delete(id);
      this.emit({ event: 'BLOCK_EXPORT_DELETED', data: { id } });
    }
  }

  // ------------------------------------------------------------------ exports

  addExport(config: ExportConfig): ExportInfo {
    const server = this.server;
    if (!server) throw new BlockError('EINVAL', 'NBD server not running');
    if (this.exportsById.has(config.id)) throw new BlockError('EEXIST', `Block export id '${config.id}' is already in use`);
    const node = typeof config.node === 'string' ? this.graph.get(config.node) : config.node;
    const name = config.name ?? node.nodeName;
    if (server.getExport(name)) throw new BlockError('EEXIST', `NBD server already has export named '${name}'`);
    const writable = config.writable ?? false;
    if (writable && node.readOnly) throw new BlockError('EROFS', `Cannot export read-only node '${node.nodeName}' as writable`);
    server.addExport({
      name,
      node,
      writable,
      description: config.description ?? '',
      writethrough: config.writethrough ?? false,
      allocationDepth: config.allocationDepth ?? false,
    });
    this.exportsById.set(config.id, { name, removing: false });
    return this.findExport(config.id)!;
  }

  /**
   * block-export-del. 'safe' fails while clients are connected; 'hard'
   * disconnects them first. The node stays in the graph.
   */
  async removeExport(id: string, mode: RemoveMode = 'safe'): Promise<void> {
    const entry = this.exportsById.get(id);
    if (!entry || !this.server) throw new BlockError('ENOENT', `Export '${id}' is not found`);
    if (entry.removing) throw new BlockError('EBUSY', `Export '${id}' is already shutting down`);
    if (mode === 'safe' && (this.server.getExport(entry.name)?.stats.connections ?? 0) > 0) {
      // QEMU's words, naming the export id.
      throw new BlockError('EBUSY', `export '${id}' still in use`);
    }
    entry.removing = true;
    try {
      await this.server.removeExport(entry.name, mode);
    } catch (err) {
      entry.removing = false;
      throw err;
    }
    this.exportsById.delete(id);
    this.emit({ event: 'BLOCK_EXPORT_DELETED', data: { id } });
  }

  /** Newest first, as QEMU's query-block-exports lists them. */
  listExports(): ExportInfo[] {
    return [...this.exportsById.keys()].reverse().map((id) => this.findExport(id)!).filter(Boolean);
  }

  /** Whether some export is served under this NBD name. */
  hasExportName(name: string): boolean {
    return this.server?.getExport(name) !== undefined;
  }

  findExport(id: string): ExportInfo | undefined {
    const entry = this.exportsById.get(id);
    const exp = entry && this.server?.getExport(entry.name);
    if (!entry || !exp) return undefined;
    return {
      id,
      type: 'nbd',
      nodeName: exp.node.nodeName,
      name: exp.name,
      writable: exp.writable,
      description: exp.description,
      shuttingDown: entry.removing,
      stats: { ...exp.stats },
    };
  }

  listConnections(): ConnectionInfo[] {
    return this.server?.connectionList() ?? [];
  }

  /** Where the NBD server listens, for logs and status. */
  nbdAddress(): string | null {
    const addr = this.server?.address;
    return addr ? describe(addr) : null;
  }

  // ----------------------------------------------------------------- shutdown

  /**
   * Stops serving and closes every image cleanly: connections finish the
   * requests they started, then every node is flushed and closed. Safe to
   * call more than once (later calls wait for the first).
   */
  shutdown(reason = 'host-signal'): Promise<void> {
    this.shuttingDown ??= this.doShutdown(reason);
    return this.shuttingDown;
  }

  // ------------------------------------------------------------ run state

  /** False between `pause` and `resume` (QMP `stop` / `cont`). */
  get running(): boolean {
    return this.paused === null;
  }

  /**
   * Holds new requests on every exported node and waits for those in
   * flight, so that no write straddles a checkpoint.
   */
  async pause(): Promise<void> {
    if (this.paused) return;
    const nodes = new Set<BlockNode>();
    for (const id of this.exportsById.keys()) {
      const node = this.findExportNode(id);
      if (node) nodes.add(node);
    }
    this.paused = [...nodes];
    await Promise.all(this.paused.map((n) => n.quiesce()));
    // Below a paused node, work a request left running (a primary's writes on their way to the secondary) ends too.
    await Promise.all([...subtree(this.paused)].map((n) => n.drain()));
    this.log.info('daemon.paused', { nodes: this.paused.map((n) => n.nodeName) });
  }

  resume(): void {
    const nodes = this.paused;
    if (!nodes) return;
    this.paused = null;
    for (const n of nodes) n.resume();
    this.log.info('daemon.resumed');
  }

  private findExportNode(id: string): BlockNode | undefined {
    const entry = this.exportsById.get(id);
    return entry ? this.server?.getExport(entry.name)?.node : undefined;
  }

  private async doShutdown(reason: string): Promise<void> {
    this.log.info('daemon.shutdown', { reason });
    // Requests held by a pause would otherwise keep the server from closing.
    this.resume();
    if (this.server) await this.stopNbdServer();
    const remote = this.remoteNodes();
    const failures = await this.graph.closeAllReport();
    // A peer that is gone (a dead replication link) cannot be flushed, and
    // nothing here depends on it: the replication engine already latched and
    // reported that error. Only images this process holds fail the shutdown.
    for (const f of failures.filter((x) => remote.has(x.node))) {
      this.log.warn('daemon.remote-flush-failed', { node: f.node.nodeName, driver: f.node.driver, error: f.error });
    }
    const local = failures.find((x) => !remote.has(x.node));
    if (local) throw local.error;
  }

  /** Nodes whose data lives only in NBD peers: nbd clients and filters with nothing but such nodes below. */
  private remoteNodes(): Set<BlockNode> {
    const remote = new Set<BlockNode>();
    const isRemote = (node: BlockNode): boolean => {
      if (remote.has(node)) return true;
      const children = [...node.children.values()].map((ref) => ref.node);
      const yes = node.driver === 'nbd' || (children.length > 0 && children.every(isRemote));
      if (yes) remote.add(node);
      return yes;
    };
    for (const node of this.graph.allNodes()) isRemote(node);
    return remote;
  }

  private emit(e: DaemonEvent): void {
    for (const l of this.listeners) {
      try {
        l(e);
      } catch (err) {
        this.log.error('daemon.event-listener-failed', { event: e.event, error: err });
      }
    }
  }
}

function subtree(roots: BlockNode[]): Set<BlockNode> {
  const seen = new Set<BlockNode>();
  const visit = (n: BlockNode): void => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const ref of n.children.values()) visit(ref.node);
  };
  for (const r of roots) visit(r);
  return seen;
}
