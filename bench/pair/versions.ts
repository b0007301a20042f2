/** The versions and the machine the numbers were measured on. */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';

export interface Versions {
  node: string;
  colo_blk: string;
  qemu: string;
  qemu_nbd: string;
  qemu_img: string;
  fio: string;
  glibc: string;
  packages: string;
  kernel: string;
  cpu: string;
  cpus: number;
  memory_gib: number;
}

function firstLine(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return ((r.stdout || r.stderr || '').split('\n')[0] ?? '').trim() || `(${cmd} not found)`;
}

export function collectVersions(): Versions {
  const root = fileURLToPath(new URL('../../../', import.meta.url));
  const pkg = JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { version?: string };
  const commit = spawnSync('git', ['-C', root, 'describe', '--always', '--dirty'], { encoding: 'utf8' }).stdout.trim();
  const dpkg = spawnSync('dpkg-query', ['-W', '-f=${Package} ${Version}\\n', 'qemu-system-x86', 'qemu-utils', 'fio', 'libc6'], { encoding: 'utf8' });
  return {
    node: process.version,
    colo_blk: `${pkg.version ?? '?'} (${commit || 'no git'})`,
    qemu: firstLine('qemu-system-x86_64', ['--version']),
    qemu_nbd: firstLine('qemu-nbd', ['--version']),
    qemu_img: firstLine('qemu-img', ['--version']),
    fio: firstLine('fio', ['--version']),
    glibc: firstLine('getconf', ['GNU_LIBC_VERSION']),
    packages: (dpkg.stdout ?? '').trim().split('\n').join(', '),
    kernel: `${release()} (${firstLine('uname', ['-srvm'])})`,
    cpu: cpus()[0]?.model ?? '?',
    cpus: cpus().length,
    memory_gib: Math.round(totalmem() / 2 ** 30),
  };
}
