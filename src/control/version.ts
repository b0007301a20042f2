/**
 * The version colo-blk reports in the QMP greeting and `query-version`.
 *
 * The `qemu` triple says which QEMU's QMP behaviour colo-blk reproduces:
 * 7.2.0 (the messages, the commands' arguments, the protocol were checked
 * against QEMU 7.2). Clients that gate features on the QEMU version thus
 * make the right choices. `package` says who is really answering:
 * "colo-blk <version>", so a client that cares can tell.
 */
import { readFileSync } from 'node:fs';

export interface VersionInfo {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export const QEMU_COMPAT = { major: 7, minor: 2, micro: 0 } as const;

let cached: string | undefined;

/** colo-blk's own version, from package.json. */
export function coloBlkVersion(): string {
  if (cached === undefined) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
      cached = typeof pkg.version === 'string' ? pkg.version : 'unknown';
    } catch {
      cached = 'unknown';
    }
  }
  return cached;
}

export function versionInfo(): VersionInfo {
  return { qemu: { ...QEMU_COMPAT }, package: `colo-blk ${coloBlkVersion()}` };
}
