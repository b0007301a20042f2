/**
 * Where an NBD server listens or a client connects: QEMU's SocketAddress
 * (`inet` host and port, or a `unix` path), and how it is written in logs
 * and in the URIs QEMU shows as a node's filename.
 */

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
