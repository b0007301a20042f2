/**
 * What `colo-blk secondary` and `colo-blk primary` share: their common
 * options, the checks that turn low-level failures into one line telling the
 * user what to fix, and the few graph steps both sides take.
 */
import { resolve } from 'node:path';
import type { BlockNode } from '../block/node.js';
import { BlockError } from '../block/errors.js';
import type { OptionDict } from '../block/options.js';
import { DaemonUsageError } from '../daemon/args.js';
import type { Daemon } from '../daemon/daemon.js';
import type { DaemonExtension, DaemonHost } from '../daemon/extension.js';
import type { SocketAddress } from '../nbd/address.js';
import { isLogLevel, setLogLevel } from '../util/log.js';
import { lastValue, parseArgs, type ParsedArgs } from './args.js';
import { probeFormat } from './open-image.js';

export interface RoleArgs {
  args: ParsedArgs;
  listen: SocketAddress;
  qmp?: string;
  pidfile?: string;
}

const COMMON_VALUES = ['listen', 'qmp', 'pidfile', 'log-level'];

/** Parses a role's command line; `values` are its own options taking a value. */
export function parseRoleArgs(command: string, argv: readonly string[], values: readonly string[], required: readonly string[]): RoleArgs {
  const args = parseArgs(argv, { withValue: [...COMMON_VALUES, ...values], switches: ['help', 'h'] });
  if (args.positionals.length > 0) throw new DaemonUsageError(args.positionals[0]!, `unexpected argument for colo-blk ${command}`);
  for (const name of ['listen', ...required]) {
    if (lastValue(args, name) === undefined) throw new DaemonUsageError(`--${name}`, 'is required');
  }
  const level = lastValue(args, 'log-level');
  if (level !== undefined) {
    if (!isLogLevel(level)) throw new DaemonUsageError('--log-level', `'${level}' is not one of debug, info, warn, error`);
    setLogLevel(level);
  }
  const out: RoleArgs = { args, listen: parseListen(lastValue(args, 'listen')!) };
  const qmp = lastValue(args, 'qmp');
  if (qmp !== undefined) out.qmp = resolve(qmp.replace(/^unix:/, '').replace(/,.*$/, ''));
  const pidfile = lastValue(args, 'pidfile');
  if (pidfile !== undefined) out.pidfile = resolve(pidfile);
  return out;
}

/** `HOST:PORT`, `[V6]:PORT`, `:PORT` (all interfaces) or `unix:PATH`. */
export function parseListen(text: string): SocketAddress {
  if (text.startsWith('unix:')) return { type: 'unix', path: resolve(text.slice(5)) };
  const m = /^(\[[^\]]+\]|[^:]*):(\d+)$/.exec(text);
  if (!m || Number(m[2]) > 65535) throw new DaemonUsageError('--listen', `'${text}' is not HOST:PORT or unix:PATH`);
  return { type: 'inet', host: m[1] === '' ? '0.0.0.0' : m[1]!.replace(/^\[|\]$/g, ''), port: m[2]! };
}

/** Blockdev options for an image file, its format probed (qcow2 or raw). */
export async function diskOptions(option: string, path: string, nodeName: string): Promise<OptionDict> {
  let format: string;
  try {
    format = await probeFormat(path);
  } catch (err) {
    throw new DaemonUsageError(option, `${(err as Error).message}: give the path of an existing disk image`);
  }
  return { driver: format, 'node-name': nodeName, file: { driver: 'file', filename: path } };
}

/** Opens a node, turning an image the driver refuses into one line naming the option. */
export async function addNode(daemon: Daemon, option: string, options: OptionDict): Promise<BlockNode> {
  try {
    return await daemon.addBlockdev(options);
  } catch (err) {
    const file = (options.file as OptionDict | undefined)?.filename ?? options['node-name'];
    throw new DaemonUsageError(option, `cannot open ${String(file)}: ${(err as Error).message}`);
  }
}

/** Starts the NBD server, explaining the usual reasons a listen fails. */
export async function listenNbd(daemon: Daemon, addr: SocketAddress): Promise<void> {
  try {
    await daemon.startNbdServer({ addr });
  } catch (err) {
    const code = (err as { code?: string }).code ?? (BlockError.is(err) ? err.code : undefined);
    const where = addr.type === 'unix' ? addr.path : `${addr.host}:${addr.port}`;
    const raw = (err as Error).message;
    if (code === 'EADDRINUSE' || /EADDRINUSE/.test(raw)) {
      throw new DaemonUsageError('--listen', `${where} is already in use: stop what listens there or choose another --listen address`);
    }
    if (code === 'EADDRNOTAVAIL' || /EADDRNOTAVAIL/.test(raw)) {
      throw new DaemonUsageError('--listen', `${where} is not an address of this host: choose one that is`);
    }
    throw new DaemonUsageError('--listen', `cannot listen on ${where}: ${raw}`);
  }
}

/** Starts the QMP monitor on a unix socket through the daemon's monitor extension. */
export async function listenQmp(daemon: Daemon, host: DaemonHost, extensions: readonly DaemonExtension[], path: string): Promise<void> {
  const monitor = extensions.find((e) => e.options.includes('qmp'));
  if (!monitor) throw new DaemonUsageError('--qmp', 'no QMP monitor is available in this build');
  try {
    await monitor.apply('qmp', `unix:${path},server=on,wait=off`, daemon, host);
  } catch (err) {
    throw new DaemonUsageError('--qmp', `cannot listen on ${path}: ${(err as Error).message}`);
  }
}
