/**
 * qemu-storage-daemon's command line, as far as colo-blk implements it:
 * `--blockdev`, `--nbd-server`, `--export`, `--pidfile`, `--log-level`,
 * each as `--opt VALUE` or `--opt=VALUE`, processed in the order given (as
 * qsd does, so an export must come after its node and the server).
 *
 * Options this module does not know can be claimed by extensions (the QMP
 * monitor's `--chardev`, `--monitor`, `--qmp`): they are kept in order as
 * actions for the extension that registered them.
 */
import { BlockError } from '../block/errors.js';
import { isDict, OptionReader, parseKeyVal, parseOptionArg, type OptionDict } from '../block/options.js';
import { isLogLevel, type LogLevel } from '../util/log.js';
import type { ExportConfig, NbdServerConfig } from './daemon.js';
import { readSocketAddress } from '../nbd/address.js';

export class DaemonUsageError extends Error {
  constructor(readonly option: string, message: string) {
    super(`${option}: ${message}`);
    this.name = 'DaemonUsageError';
  }
}

export type DaemonAction =
  | { kind: 'blockdev'; options: OptionDict }
  | { kind: 'nbd-server'; config: NbdServerConfig }
  | { kind: 'export'; config: ExportConfig }
  | { kind: 'extension'; option: string; value: string };

export interface DaemonArgs {
  actions: DaemonAction[];
  pidfile?: string;
  logLevel?: LogLevel;
  help: boolean;
}

/** qsd options that need an extension (the QMP monitor) or QOM objects colo-blk does not have. */
const EXTENSION_OPTIONS = ['chardev', 'monitor', 'qmp', 'object'];

export const DAEMON_USAGE = `usage: colo-blk daemon [options]
  --blockdev OPTIONS        add a block node (JSON or key=value, as qemu-storage-daemon)
  --nbd-server addr.type=inet,addr.host=H,addr.port=P[,max-connections=N]
  --nbd-server addr.type=unix,addr.path=P[,max-connections=N]
                            start the NBD server
  --export type=nbd,id=ID,node-name=N[,name=NAME][,writable=on][,description=TEXT]
                            export a node over NBD
  --chardev socket,id=ID,path=PATH,server=on,wait=off   (or host=H,port=P)
  --monitor [chardev=]ID[,mode=control]
                            a QMP monitor on that socket
  --qmp unix:PATH[,server=on,wait=off] | --qmp tcp:HOST:PORT
                            a QMP monitor (qemu-system's shorthand)
  --pidfile PATH            write the process id once ready (removed on exit)
  --log-level LEVEL         debug, info, warn or error
When ready, one JSON line {"event":"daemon.ready",...} is printed on stdout.
SIGTERM, SIGINT and QMP quit flush and close every image, then exit 0.
`;

const WITH_VALUE = new Set(['blockdev', 'nbd-server', 'export', 'pidfile', 'log-level']);

export function parseDaemonArgs(argv: readonly string[], extensionOptions: readonly string[] = []): DaemonArgs {
  const out: DaemonArgs = { actions: [], help: false };
  const extensions = new Set(extensionOptions);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '-h' || arg === '--help') {
      out.help = true;
      continue;
    }
    if (!arg.startsWith('--')) throw new DaemonUsageError(arg, 'unexpected argument');
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const known = WITH_VALUE.has(name) || extensions.has(name);
    if (!known) {
      if (EXTENSION_OPTIONS.includes(name)) throw new DaemonUsageError(`--${name}`, 'not supported by this daemon');
      throw new DaemonUsageError(`--${name}`, 'unrecognized option');
    }
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (i + 1 < argv.length) value = argv[++i]!;
    else throw new DaemonUsageError(`--${name}`, 'requires an argument');
    const option = `--${name}`;
    try {
      switch (name) {
        case 'blockdev':
          out.actions.push({ kind: 'blockdev', options: parseOptionArg(value) });
          break;
        case 'nbd-server':
          out.actions.push({ kind: 'nbd-server', config: parseNbdServer(value) });
          break;
        case 'export':
          out.actions.push({ kind: 'export', config: parseExport(value) });
          break;
        case 'pidfile':
          if (value === '') throw new BlockError('EINVAL', 'empty path');
          out.pidfile = value;
          break;
        case 'log-level':
          if (!isLogLevel(value)) throw new BlockError('EINVAL', `unknown level '${value}' (debug, info, warn, error)`);
          out.logLevel = value;
          break;
        default:
          out.actions.push({ kind: 'extension', option: name, value });
      }
    } catch (err) {
      if (err instanceof DaemonUsageError) throw err;
      throw new DaemonUsageError(option, err instanceof Error ? err.message : String(err));
    }
  }
  return out;
}

function keyval(text: string): OptionReader {
  return new OptionReader(text.trim().startsWith('{') ? parseOptionArg(text) : parseKeyVal(text));
}

function refuseLeftovers(o: OptionReader): void {
  const left = o.leftovers();
  if (left.length > 0) throw new BlockError('EINVAL', `Parameter '${o.prefix}${left[0]}' is unexpected`);
}

export function parseNbdServer(text: string): NbdServerConfig {
  const o = keyval(text);
  if (o.has('tls-creds') || o.has('tls-authz')) throw new BlockError('ENOTSUP', 'TLS is not supported by the NBD server');
  const addr = o.take('addr');
  if (addr === undefined) throw new BlockError('EINVAL', "Parameter 'addr' is missing");
  if (!isDict(addr)) throw new BlockError('EINVAL', "Invalid parameter type for 'addr', expected: object");
  const config: NbdServerConfig = { addr: readSocketAddress(new OptionReader(addr, 'addr.')) };
  const max = o.optInt('max-connections', 0, 0xffffffff);
  if (max !== undefined) config.maxConnections = max;
  const handshake = o.optInt('handshake-max-seconds', 0, 3600);
  if (handshake !== undefined && handshake > 0) config.limits = { handshakeTimeoutMs: handshake * 1000 };
  refuseLeftovers(o);
  return config;
}

export function parseExport(text: string): ExportConfig {
  const o = keyval(text);
  const type = o.optString('type');
  if (type === undefined) throw new BlockError('EINVAL', "Parameter 'type' is missing");
  if (type !== 'nbd') throw new BlockError('EINVAL', `Parameter 'type' does not accept value '${type}' (only nbd exports are supported)`);
  const id = o.optString('id');
  if (id === undefined) throw new BlockError('EINVAL', "Parameter 'id' is missing");
  const nodeName = o.optString('node-name');
  if (nodeName === undefined) throw new BlockError('EINVAL', "Parameter 'node-name' is missing");
  const config: ExportConfig = { id, node: nodeName };
  const name = o.optString('name');
  if (name !== undefined) config.name = name;
  const writable = o.optBool('writable');
  if (writable !== undefined) config.writable = writable;
  const description = o.optString('description');
  if (description !== undefined) config.description = description;
  const writethrough = o.optBool('writethrough');
  if (writethrough !== undefined) config.writethrough = writethrough;
  const depth = o.optBool('allocation-depth');
  if (depth !== undefined) config.allocationDepth = depth;
  if (o.has('bitmaps') || o.has('bitmap')) throw new BlockError('ENOTSUP', 'dirty bitmap exports are not supported');
  refuseLeftovers(o);
  return config;
}
