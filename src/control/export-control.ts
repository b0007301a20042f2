/**
 * What the QMP export commands need from the NBD server. The handlers
 * validate arguments and resolve nodes with QEMU's messages; an
 * implementation does the work and throws (a BlockError or QmpError, whose
 * message reaches the client) when it cannot.
 */
import type { BlockNode } from '../block/node.js';

/** QEMU's flat SocketAddress (the legacy `{type, data}` form is unwrapped by the handler). */
export type SocketAddress =
  | {
    type: 'inet';
    host: string;
    port: string;
    numeric?: boolean;
    to?: number;
    ipv4?: boolean;
    ipv6?: boolean;
    keepAlive?: boolean;
    mptcp?: boolean;
  }
  | { type: 'unix'; path: string; abstract?: boolean; tight?: boolean }
  | { type: 'vsock'; cid: string; port: string }
  /** An inherited descriptor, by number (colo-blk has no `getfd`, so names are refused before this). */
  | { type: 'fd'; str: string };

export interface NbdServerConfig {
  addr: SocketAddress;
  tlsCreds?: string;
  tlsAuthz?: string;
  /** 0 means unlimited, as in QEMU. */
  maxConnections: number;
}

export interface NbdExportConfig {
  /** Block export id (QMP's handle for the export). */
  id: string;
  node: BlockNode;
  /** The name NBD clients ask for. */
  name: string;
  description?: string;
  writable: boolean;
  /** Writes are flushed before they are acknowledged. */
  writethrough: boolean;
  /** Offer the `qemu:allocation-depth` metadata context. */
  allocationDepth: boolean;
}

export interface BlockExportInfo {
  id: string;
  type: 'nbd';
  nodeName: string;
  /** Removal was requested and clients are still being shut down. */
  shuttingDown: boolean;
}

export interface ExportControl {
  readonly serverRunning: boolean;
  /** Starts the NBD server; the handler has checked that none is running. */
  startServer(config: NbdServerConfig): Promise<void>;
  /** Removes every export (each sends BLOCK_EXPORT_DELETED) and stops listening. */
  stopServer(): Promise<void>;
  findExport(id: string): BlockExportInfo | undefined;
  /** Whether an export (of any id) is served under this NBD name. */
  hasExportName(name: string): boolean;
  addExport(config: NbdExportConfig): Promise<void>;
  /**
   * `safe` refuses while NBD clients are connected ("export 'X' still in
   * use"); `hard` disconnects them. BLOCK_EXPORT_DELETED follows once the
   * export is gone.
   */
  removeExport(id: string, mode: 'safe' | 'hard'): Promise<void>;
  /** Newest first, as QEMU lists them. */
  listExports(): BlockExportInfo[];
}
