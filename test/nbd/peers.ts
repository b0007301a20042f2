/**
 * Real NBD peers as child processes: qemu-nbd, qemu-storage-daemon, nbdkit
 * and colo-blk's own daemon, each on a unix socket (or port 0 for colo-blk)
 * and each waited for through its pidfile or ready line, never by sleeping.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { NODE_FLAGS } from '../../src/cli/node-flags.js';
import { CLI, requireTool } from '../helpers/env.js';

export interface Peer {
  proc: ChildProcess;
  /** stderr so far, for failure messages. */
  stderr(): string;
  /** SIGTERM (or the given signal) and wait for the exit status. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  readonly exited: Promise<number | null>;
}

function track(proc: ChildProcess): Peer {
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : null))));
  return {
    proc,
    stderr: () => err,
    exited,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

/** Polls a real condition (a file appearing) with a bound, failing with the peer's stderr. */
export async function waitFor(cond: () => boolean, what: string, peer?: Peer, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (peer && peer.proc.exitCode !== null) throw new Error(`${what}: process exited ${peer.proc.exitCode}: ${peer.stderr()}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${peer ? `: ${peer.stderr()}` : ''}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function pidfileReady(path: string): () => boolean {
  return () => existsSync(path) && readFileSync(path, 'utf8').trim().length > 0;
}

export async function qemuNbd(image: string, socket: string, pidfile: string, extra: string[] = []): Promise<Peer> {
  requireTool('qemu-nbd');
  const peer = track(spawn('qemu-nbd', ['-f', 'raw', '-k', socket, '-x', 'disk', '-t', '--cache=writeback', '--pid-file', pidfile, ...extra, image], {
    stdio: ['ignore', 'ignore', 'pipe'],
  }));
  await waitFor(pidfileReady(pidfile), 'qemu-nbd', peer);
  await waitFor(() => existsSync(socket), 'qemu-nbd socket', peer);
  return peer;
}

export async function qemuStorageDaemon(image: string, socket: string, pidfile: string): Promise<Peer> {
  requireTool('qemu-storage-daemon');
  const peer = track(spawn('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=file0,filename=${image}`,
    '--blockdev', 'driver=raw,node-name=disk0,file=file0',
    '--nbd-server', `addr.type=unix,addr.path=${socket}`,
    '--export', 'type=nbd,id=exp0,node-name=disk0,name=disk,writable=on',
    '--pidfile', pidfile,
  ], { stdio: ['ignore', 'ignore', 'pipe'] }));
  await waitFor(pidfileReady(pidfile), 'qemu-storage-daemon', peer);
  return peer;
}

export async function nbdkit(socket: string, pidfile: string, args: string[]): Promise<Peer> {
  requireTool('nbdkit');
  const peer = track(spawn('nbdkit', ['-f', '-U', socket, '-P', pidfile, ...args], { stdio: ['ignore', 'ignore', 'pipe'] }));
  await waitFor(pidfileReady(pidfile), 'nbdkit', peer);
  return peer;
}

export interface ColoDaemon extends Peer {
  /** `host:port` or `unix:PATH` from the ready line. */
  nbd: string;
  port: number;
  ready: Record<string, unknown>;
}

/** Spawns the compiled `colo-blk daemon` and waits for its ready line. */
export async function coloDaemon(args: string[], env: NodeJS.ProcessEnv = {}): Promise<ColoDaemon> {
  const proc = spawn(process.execPath, [...NODE_FLAGS, CLI, 'daemon', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, COLO_BLK_LOG_LEVEL: 'warn', ...env },
  });
  const peer = track(proc);
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    let out = '';
    const onData = (d: Buffer): void => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        proc.stdout!.off('data', onData);
        try {
          resolve(JSON.parse(out.slice(0, nl)) as Record<string, unknown>);
        } catch (err) {
          reject(err);
        }
      }
    };
    proc.stdout!.on('data', onData);
    void peer.exited.then((code) => reject(new Error(`colo-blk daemon exited ${code} before ready: ${peer.stderr()}`)));
  });
  const nbd = String(ready.nbd ?? '');
  const port = Number(/:(\d+)$/.exec(nbd)?.[1] ?? 0);
  return { ...peer, nbd, port, ready };
}
