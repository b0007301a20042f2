/**
 * What `colo-blk secondary` and `colo-blk primary` share: their common
 * options, the checks that turn low-level failures into one line telling the
 * user what to fix, and the few graph steps both sides take.
 */
import { resolve } from 'node:path';
import type { BlockNode } from '../block/node.js';
import { BlockError, strerror } from '../block/errors.js';
import type { OptionDict } from '../block/options.js';
import { DaemonUsageError } from '../daemon/args.js';
import type { Daemon } from '../daemon/daemon.js';
import type { DaemonExtension, DaemonHost } from '../daemon/extension.js';
import type { SocketAddress } from '../nbd/address.js';
import { isLogLevel, setLogLevel } from '../util/log.js';
import { lastValue, parseArgs, UsageError, type ParsedArgs } from './args.js';
import { probeFormat } from './open-image.js';

export interface RoleArgs {
  args: ParsedArgs;
  listen: SocketAddress;
  qmp?: string;
  pidfile?: string;
}

const COMMON_VALUES = ['listen', 'qmp', 'pidfile', 'log-level'];

/**
 * Parses a role's command line. `values` are its own options taking a
 * value, `switches` its own switches, and `required` maps each option that
 * must be given to what it names (for the message when it is missing).
 */
export function parseRoleArgs(
  command: string,
  argv: readonly string[],
  spec: { values: readonly string[]; switches?: readonly string[]; required: Readonly<Record<string, string>> },
): RoleArgs {
  let args: ParsedArgs;
  try {
    args = parseArgs(argv, { withValue: [...COMMON_VALUES, ...spec.values], switches: ['help', 'h', ...(spec.switches ?? [])] });
  } catch (err) {
    throw new UsageError(`${(err as Error).message} (colo-blk ${command} --help lists the options)`);
  }
  if (args.positionals.length > 0) throw new DaemonUsageError(args.positionals[0]!, `unexpected argument (colo-blk ${command} --help lists the options)`);
  const required: Record<string, string> = { listen: 'the NBD server address, HOST:PORT or unix:PATH', ...spec.required };
  for (const [name, what] of Object.entries(required)) {
    if (lastValue(args, name) === undefined) throw new DaemonUsageError(`--${name}`, `missing; give ${what}`);
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
  if (text.startsWith('unix:')) {
    if (text.length === 5) throw new DaemonUsageError('--listen', "'unix:' names no socket path: give unix:PATH");
    return { type: 'unix', path: resolve(text.slice(5)) };
  }
  const m = /^(\[[^\]]+\]|[^:]*):(\d+)$/.exec(text);
  if (!m) throw new DaemonUsageError('--listen', `'${text}' is not HOST:PORT or unix:PATH (for example 127.0.0.1:10809)`);
  if (Number(m[2]) > 65535) throw new DaemonUsageError('--listen', `port ${m[2]} in '${text}' is out of range: use 1 to 65535 (0 picks a free port)`);
  return { type: 'inet', host: m[1] === '' ? '0.0.0.0' : m[1]!.replace(/^\[|\]$/g, ''), port: m[2]! };
}

/** `16 MiB (16777216 bytes)`: sizes in messages. */
export function describeSize(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && value % 1024 === 0 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} bytes` : `${value} ${units[unit]} (${bytes} bytes)`;
}

/** Blockdev options for an image file, its format probed (qcow2 or raw). */
export async function diskOptions(option: string, path: string, nodeName: string): Promise<OptionDict> {
  let format: string;
  try {
    format = await probeFormat(path);
  } catch (err) {
    const code = BlockError.is(err) ? err.code : undefined;
    const reason = code ? strerror(code) : (err as Error).message;
    throw new DaemonUsageError(option, `cannot open ${path} (${reason}): name an existing disk image`);
  }
  return { driver: format, 'node-name': nodeName, file: { driver: 'file', filename: path } };
}

/** Opens a node, turning an image the driver refuses into one line naming the option and what to do. */
export async function addNode(daemon: Daemon, option: string, options: OptionDict): Promise<BlockNode> {
  try {
    return await daemon.addBlockdev(options);
  } catch (err) {
    const file = (options.file as OptionDict | undefined)?.filename ?? options['node-name'];
    const reason = (err as Error).message;
    // Damage shows as EINVAL/EIO; the driver's refusal of a corrupt image already says how to repair.
    const damaged = !BlockError.is(err) || err.code === 'EINVAL' || err.code === 'EIO';
    const advice = options.driver === 'qcow2' && damaged && !/qemu-img check/.test(reason)
      ? ': the qcow2 image is damaged; repair it (qemu-img check -r all) or restore it from a copy'
      : '';
    throw new DaemonUsageError(option, `cannot open ${String(file)}: ${reason}${advice}`);
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
    if (code === 'EADDRINUSE' || code === 'EBUSY' || /EADDRINUSE/.test(raw)) {
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
    const reason = (err as Error).message.replace(/^cannot listen on \S+: /, '');
    const advice = /another server/.test(reason) ? ': stop it or choose another --qmp path' : '';
    throw new DaemonUsageError('--qmp', `cannot listen on ${path}: ${reason}${advice}`);
  }
}
