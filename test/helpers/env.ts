/**
 * Shared test plumbing: temporary folders, peer tools, and child processes.
 * Tests that need a peer tool call `requireTool`, which fails the test with
 * a message naming the Debian package `.ci/run` should have installed.
 */
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const PACKAGES: Record<string, string> = {
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  'qemu-storage-daemon': 'qemu-system-common',
  'qemu-system-x86_64': 'qemu-system-x86',
  nbdkit: 'nbdkit',
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdsh: 'python3-libnbd',
  'nbd-client': 'nbd-client',
  fio: 'fio',
};

const found = new Map<string, boolean>();

export function hasTool(name: string): boolean {
  let ok = found.get(name);
  if (ok === undefined) {
    ok = spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0
      || spawnSync('sh', ['-c', `test -x /usr/sbin/${name}`], { stdio: 'ignore' }).status === 0;
    found.set(name, ok);
  }
  return ok;
}

/** Throws a clear error when a peer tool is missing. */
export function requireTool(name: string): void {
  if (!hasTool(name)) {
    const pkg = PACKAGES[name] ?? name;
    throw new Error(`${name} is not installed: .ci/run must install the Debian package ${pkg} (apt-get install -y ${pkg})`);
  }
}

/** A fresh folder removed when the process exits (and by `cleanup`). */
export function tempDir(prefix = 'colo-blk-test-'): { path: string; cleanup(): void; file(name: string): string } {
  const base = process.env.COLO_BLK_TEST_TMP ?? (process.platform === 'linux' ? '/dev/shm' : tmpdir());
  const path = mkdtempSync(join(base, prefix));
  let removed = false;
  const cleanup = (): void => {
    if (!removed) {
      removed = true;
      rmSync(path, { recursive: true, force: true });
    }
  };
  process.once('exit', cleanup);
  return { path, cleanup, file: (name) => join(path, name) };
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion without a shell. */
export function run(cmd: string, args: readonly string[], opts: SpawnOptions & { input?: string | Buffer } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      resolve({
        status: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
      });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

/** Runs a command and throws with its output when it fails. */
export async function runOk(cmd: string, args: readonly string[], opts: SpawnOptions & { input?: string | Buffer } = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  }
  return r;
}

/** Path of the compiled CLI entry point, for tests that spawn colo-blk. */
export const CLI = new URL('../../src/cli/main.js', import.meta.url).pathname;

/** A deterministic pseudo-random buffer (xorshift), so failures reproduce. */
export function patternBuffer(length: number, seed: number): Buffer {
  const buf = Buffer.alloc(length);
  let x = (seed | 0) || 0x9e3779b9;
  for (let i = 0; i + 4 <= length; i += 4) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    buf.writeInt32LE(x | 0, i);
  }
  for (let i = length & ~3; i < length; i++) buf[i] = i & 0xff;
  return buf;
}

/** Creates (or resets) a sparse raw file of `size` bytes. */
export function sparseFile(path: string, size: number): string {
  writeFileSync(path, '');
  truncateSync(path, size);
  return path;
}
