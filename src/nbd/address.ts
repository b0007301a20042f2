/**
 * Where an NBD server listens or a client connects: QEMU's SocketAddress
 * (`inet` host and port, or a `unix` path), and how it is written in logs
 * and in the URIs QEMU shows as a node's filename.
 */
import { BlockError } from '../block/errors.js';
import type { OptionReader } from '../block/options.js';

export type SocketAddress =
  | { type: 'inet'; host: string; port: number | string }
  | { type: 'unix'; path: string };

/** `host:port` (IPv6 hosts bracketed) or `unix:PATH`. */
export function describe(addr: SocketAddress): string {
  if (addr.type === 'unix') return `unix:${addr.path}`;
  return `${addr.host.includes(':') ? `[${addr.host}]` : addr.host}:${addr.port}`;
}

/** The URI QEMU reports as an nbd node's filename. */
export function nbdUri(addr: SocketAddress, exportName: string): string {
  const name = encodeURIComponent(exportName).replace(/%2F/gi, '/');
  if (addr.type === 'unix') return `nbd+unix:///${name}?socket=${addr.path}`;
  const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
  return `nbd://${host}:${addr.port}${exportName === '' ? '' : `/${name}`}`;
}

/**
 * Parses `nbd://host[:port][/export]` and `nbd+unix:///export?socket=PATH`
 * (the forms qemu-img and qemu-io accept). Returns null for anything else.
 */
export function parseNbdUri(uri: string): { address: SocketAddress; exportName: string } | null {
  const tcp = /^nbd(?:\+tcp)?:\/\/(\[[^\]]+\]|[^/:?]+)(?::(\d+))?(?:\/([^?]*))?$/.exec(uri);
  if (tcp) {
    return {
      address: { type: 'inet', host: tcp[1]!.replace(/^\[|\]$/g, ''), port: tcp[2] ?? '10809' },
      exportName: decodeURIComponent(tcp[3] ?? ''),
    };
  }
  const unix = /^nbd\+unix:\/\/\/([^?]*)\?socket=(.+)$/.exec(uri);
  if (unix) {
    return { address: { type: 'unix', path: decodeURIComponent(unix[2]!) }, exportName: decodeURIComponent(unix[1]!) };
  }
  return null;
}

/** Reads QEMU's SocketAddress dictionary (`type` inet or unix), refusing keys it does not know. */
export function readSocketAddress(o: OptionReader): SocketAddress {
  const type = o.optEnum('type', ['inet', 'unix', 'fd', 'vsock']);
  if (type === undefined) throw new BlockError('EINVAL', `Parameter '${o.prefix}type' is missing`);
  let addr: SocketAddress;
  if (type === 'inet') {
    const host = o.string('host');
    const port = o.optString('port') ?? '10809';
    if (!/^\d+$/.test(port) || Number(port) > 65535) throw new BlockError('EINVAL', `Invalid port '${port}'`);
    // Accepted for QEMU compatibility; Node picks the address family itself.
    for (const k of ['numeric', 'ipv4', 'ipv6', 'keep-alive', 'mptcp']) o.optBool(k);
    o.optString('to');
    addr = { type: 'inet', host, port };
  } else if (type === 'unix') {
    addr = { type: 'unix', path: o.string('path') };
    o.optBool('abstract');
    o.optBool('tight');
  } else {
    throw new BlockError('EINVAL', `NBD over '${type}' sockets is not supported`);
  }
  const left = o.leftovers();
  if (left.length > 0) throw new BlockError('EINVAL', `Parameter '${o.prefix}${left[0]}' is unexpected`);
  return addr;
}
