/**
 * QMP socket addresses written the way QEMU users write them:
 * `unix:/run/qmp.sock,server=on,wait=off`, `tcp:127.0.0.1:4444`,
 * `tcp:[::1]:4444`, or a bare path.
 */

export type QmpSocketAddress = { path: string } | { host: string; port: number };

export function parseQmpAddress(text: string): QmpSocketAddress {
  const [main, ...options] = splitOptions(text);
  for (const opt of options) {
    const [key, value] = opt.split('=', 2) as [string, string | undefined];
    if (key === 'server' && (value === undefined || value === 'on')) continue;
    if (key === 'wait' && value === 'off') continue;
    if (key === 'server') throw new Error('colo-blk serves QMP; server=off (connecting out) is not supported');
    if (key === 'wait') throw new Error('wait=on is not supported: colo-blk does not block until a QMP client connects');
    if (key === 'nodelay') continue;
    throw new Error(`unknown QMP socket option '${opt}'`);
  }
  if (main.startsWith('tcp:')) {
    const m = /^tcp:(\[[^\]]+\]|[^:]*):(\d+)$/.exec(main);
    if (!m) throw new Error(`invalid TCP address '${main}' (expected tcp:HOST:PORT)`);
    const port = Number(m[2]);
    if (port > 65535) throw new Error(`invalid port ${m[2]}`);
    return { host: m[1]!.replace(/^\[(.*)\]$/, '$1') || '0.0.0.0', port };
  }
  const path = main.startsWith('unix:') ? main.slice(5) : main;
  if (path === '') throw new Error('empty QMP socket path');
  return { path };
}

/** Splits at commas, where QEMU's `,,` stands for a literal comma. */
function splitOptions(text: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',') {
      if (text[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      parts.push(cur);
      cur = '';
    } else {
      cur += text[i];
    }
  }
  parts.push(cur);
  return parts;
}
