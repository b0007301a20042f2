/**
 * QMP monitors for `colo-blk daemon`, with qemu-storage-daemon's options:
 * `--chardev socket,id=ID,path=PATH,server=on,wait=off` (or host/port) with
 * `--monitor [chardev=]ID[,mode=control]`, and qemu-system's shorthand
 * `--qmp unix:PATH,server=on,wait=off` / `--qmp tcp:HOST:PORT`.
 *
 * Every monitor shares one command registry and one event hub: the block
 * graph, the NBD exports (through DaemonExportControl) and `quit`; the
 * replication engine and the job runner add theirs through `extraDeps`.
 */
import { BlockError } from '../block/errors.js';
import { isDict, OptionReader, parseKeyVal } from '../block/options.js';
import { parseQmpAddress, type QmpSocketAddress } from '../control/address.js';
import { buildRegistry, type ControlDeps } from '../control/commands/index.js';
import { EventHub } from '../control/events.js';
import { QmpServer } from '../control/server.js';
import type { Daemon } from './daemon.js';
import type { DaemonExtension, DaemonHost } from './extension.js';
import { DaemonExportControl } from './export-control.js';

export type ExtraControlDeps = Omit<ControlDeps, 'graph' | 'exports' | 'onQuit'>;

export class MonitorExtension implements DaemonExtension {
  readonly options = ['chardev', 'monitor', 'qmp'] as const;
  private readonly chardevs = new Map<string, QmpSocketAddress>();
  private qmp: QmpServer | null = null;
  private events: EventHub | null = null;
  private exports: DaemonExportControl | null = null;
  private readonly listening: string[] = [];

  /** `extraDeps` is called once, when the first monitor starts (engines register their controls there). */
  constructor(private readonly extraDeps: (daemon: Daemon, events: EventHub) => ExtraControlDeps = () => ({})) {}

  async apply(option: string, value: string, daemon: Daemon, host: DaemonHost): Promise<void> {
    switch (option) {
      case 'chardev':
        this.addChardev(value);
        return;
      case 'monitor':
        return this.listen(this.monitorAddress(value), daemon, host);
      case 'qmp':
        return this.listen(parseQmpAddress(value), daemon, host);
      default:
        throw new BlockError('EINVAL', `unknown monitor option --${option}`);
    }
  }

  describe(): Record<string, unknown> {
    return { qmp: this.listening };
  }

  async close(): Promise<void> {
    await this.qmp?.close();
    this.exports?.dispose();
    this.events?.close();
    this.qmp = null;
  }

  private addChardev(value: string): void {
    const o = new OptionReader(parseKeyVal(value, 'backend'));
    const backend = o.string('backend');
    if (backend !== 'socket') throw new BlockError('EINVAL', `chardev backend '${backend}' is not supported (only socket)`);
    const id = o.string('id');
    if (this.chardevs.has(id)) throw new BlockError('EEXIST', `attempt to add duplicate property '${id}' to object (type 'container')`);
    const path = o.optString('path');
    const host = o.optString('host');
    const port = o.optInt('port', 0, 65535);
    if (o.optBool('server') === false) throw new BlockError('EINVAL', 'server=off (connecting out) is not supported');
    if (o.optBool('wait') === true) throw new BlockError('EINVAL', 'wait=on is not supported');
    o.optBool('nodelay');
    const left = o.leftovers();
    if (left.length > 0) throw new BlockError('EINVAL', `Parameter '${left[0]}' is unexpected`);
    if (path !== undefined && (host !== undefined || port !== undefined)) throw new BlockError('EINVAL', 'path and host/port are exclusive');
    if (path !== undefined) this.chardevs.set(id, { path });
    else if (port !== undefined) this.chardevs.set(id, { host: host ?? '0.0.0.0', port });
    else throw new BlockError('EINVAL', 'chardev socket needs path or port');
  }

  private monitorAddress(value: string): QmpSocketAddress {
    const dict = parseKeyVal(value, 'chardev');
    if (!isDict(dict)) throw new BlockError('EINVAL', 'invalid monitor options');
    const o = new OptionReader(dict);
    const id = o.string('chardev');
    const mode = o.optEnum('mode', ['control', 'readline']);
    if (mode === 'readline') throw new BlockError('EINVAL', 'Only mode=control is supported');
    o.optBool('pretty');
    const left = o.leftovers();
    if (left.length > 0) throw new BlockError('EINVAL', `Parameter '${left[0]}' is unexpected`);
    const addr = this.chardevs.get(id);
    if (!addr) throw new BlockError('ENOENT', `chardev "${id}" not found`);
    return addr;
  }

  private async listen(addr: QmpSocketAddress, daemon: Daemon, host: DaemonHost): Promise<void> {
    if (!this.qmp) {
      const events = new EventHub();
      const exports = new DaemonExportControl(daemon, events);
      const registry = buildRegistry({
        ...this.extraDeps(daemon, events),
        graph: daemon.graph,
        exports,
        runState: daemon,
        events,
        onQuit: () => host.quit('host-qmp-quit'),
      });
      this.events = events;
      this.exports = exports;
      this.qmp = new QmpServer({ registry, events });
    }
    const bound = await this.qmp.listen(addr);
    this.listening.push('path' in bound ? `unix:${bound.path}` : `tcp:${bound.host}:${bound.port}`);
  }
}
