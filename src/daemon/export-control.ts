/**
 * The QMP export commands' view of the daemon: `ExportControl` (see
 * src/control/export-control.ts) implemented on `Daemon`, and the daemon's
 * BLOCK_EXPORT_DELETED events forwarded to QMP. Wiring a monitor is then:
 *
 *   buildRegistry({ graph: daemon.graph, exports: new DaemonExportControl(daemon, events), ... })
 */
import { BlockError } from '../block/errors.js';
import type { BlockExportInfo, ExportControl, NbdExportConfig, NbdServerConfig } from '../control/export-control.js';
import type { QmpEventSink } from '../control/events.js';
import type { SocketAddress } from '../nbd/address.js';
import type { Daemon, ExportInfo } from './daemon.js';

export class DaemonExportControl implements ExportControl {
  private readonly unsubscribe: () => void;

  constructor(private readonly daemon: Daemon, events?: QmpEventSink) {
    this.unsubscribe = daemon.onEvent((e) => {
      if (e.event === 'BLOCK_EXPORT_DELETED') events?.emit('BLOCK_EXPORT_DELETED', { id: e.data.id });
    });
  }

  get serverRunning(): boolean {
    return this.daemon.serverRunning;
  }

  async startServer(config: NbdServerConfig): Promise<void> {
    if (config.tlsCreds !== undefined || config.tlsAuthz !== undefined) {
      throw new BlockError('ENOTSUP', 'TLS is not supported by the NBD server');
    }
    await this.daemon.startNbdServer({ addr: toAddress(config.addr), maxConnections: config.maxConnections });
  }

  stopServer(): Promise<void> {
    return this.daemon.stopNbdServer();
  }

  findExport(id: string): BlockExportInfo | undefined {
    const e = this.daemon.findExport(id);
    return e && summary(e);
  }

  hasExportName(name: string): boolean {
    return this.daemon.hasExportName(name);
  }

  async addExport(config: NbdExportConfig): Promise<void> {
    const e: Parameters<Daemon['addExport']>[0] = {
      id: config.id,
      node: config.node,
      name: config.name,
      writable: config.writable,
      writethrough: config.writethrough,
      allocationDepth: config.allocationDepth,
    };
    if (config.description !== undefined) e.description = config.description;
    this.daemon.addExport(e);
  }

  removeExport(id: string, mode: 'safe' | 'hard'): Promise<void> {
    return this.daemon.removeExport(id, mode);
  }

  listExports(): BlockExportInfo[] {
    return this.daemon.listExports().map(summary);
  }

  /** Stops forwarding events (when the monitor goes away before the daemon). */
  dispose(): void {
    this.unsubscribe();
  }
}

function summary(e: ExportInfo): BlockExportInfo {
  return { id: e.id, type: e.type, nodeName: e.nodeName, shuttingDown: e.shuttingDown };
}

function toAddress(addr: NbdServerConfig['addr']): SocketAddress {
  switch (addr.type) {
    case 'inet':
      return { type: 'inet', host: addr.host, port: addr.port };
    case 'unix':
      if (addr.abstract) throw new BlockError('ENOTSUP', 'abstract unix sockets are not supported');
      return { type: 'unix', path: addr.path };
    default:
      throw new BlockError('ENOTSUP', `NBD over '${addr.type}' sockets is not supported`);
  }
}
