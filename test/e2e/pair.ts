/**
 * The pair driver: one side of a COLO pair as its own process, either QEMU
 * 7.2 (`qemu-system-x86_64 -M none`, no guest, built and driven only over
 * QMP with the qemu-colo anchor's recipe) or colo-blk (`colo-blk secondary`
 * / `colo-blk primary`). NBD and QMP listen on unix sockets in the test's
 * folder. A side is ready when its QMP monitor answers (QEMU) or it printed
 * its ready line (colo-blk); nothing sleeps. Every process belongs to the
 * test's ProcessGroup, which kills it on every exit path.
 */
import { createServer } from 'node:net';
import { join } from 'node:path';
import { QmpClient } from '../../src/control/qmp-client.js';
import { requireTool, runOk } from '../helpers/env.js';
import type { Child, ProcessGroup } from './processes.js';

export type Impl = 'qemu' | 'colo-blk';
export type Format = 'raw' | 'qcow2';

interface Side {
  impl: Impl;
  child: Child;
  qmp: QmpClient;
  qmpPath: string;
  /** Where the side's NBD server listens. */
  nbd: NbdAddress;
  disk: string;
  format: Format;
}

export interface Secondary extends Side {
  active: string;
  hidden: string;
  /** The secondary VM's view: `svm` on colo-blk, `sec-top` in the anchor's QEMU recipe. */
  viewUri: string;
  /** The replication target the primary writes into. */
  parentUri: string;
}

export interface Primary extends Side {
  /** The protected disk: `pvm`, the quorum over the local disk and the replication child. */
  guestUri: string;
}

/** A unix socket path, or a TCP host and port. */
export type NbdAddress = { path: string } | { host: string; port: number };
export type Transport = 'unix' | 'tcp';

/** The URI qemu-io, qemu-img and colo-blk take for an export (a string is a unix socket path). */
export function nbdUri(addr: NbdAddress | string, exportName: string): string {
  const a = typeof addr === 'string' ? { path: addr } : addr;
  return 'path' in a ? `nbd+unix:///${exportName}?socket=${a.path}` : `nbd://${a.host}:${a.port}/${exportName}`;
}

/** `--listen` for a colo-blk side: a unix socket, or port 0 on loopback (the ready line tells the port). */
export function listenArg(addr: NbdAddress): string {
  return 'path' in addr ? `unix:${addr.path}` : `${addr.host}:${addr.port}`;
}

function boundAddress(ready: Record<string, unknown>, asked: NbdAddress): NbdAddress {
  if ('path' in asked) return asked;
  const m = /^(.*):(\d+)$/.exec(String(ready.nbd));
  if (!m) throw new Error(`no TCP address in the ready line ${JSON.stringify(ready)}`);
  return { host: m[1]!, port: Number(m[2]) };
}

/** A free loopback port for QEMU, which cannot report the one it picks for port 0. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

async function qemuNbdAddr(transport: Transport, socket: string): Promise<{ addr: NbdAddress; qmp: Record<string, unknown> }> {
  if (transport === 'unix') return { addr: { path: socket }, qmp: { type: 'unix', data: { path: socket } } };
  const port = await freePort();
  return { addr: { host: '127.0.0.1', port }, qmp: { type: 'inet', data: { host: '127.0.0.1', port: String(port) } } };
}

/** `qemu-system-x86_64 -M none -nodefaults -display none -qmp unix:...`, connected and negotiated. */
async function launchQemu(group: ProcessGroup, name: string, qmpPath: string): Promise<{ child: Child; qmp: QmpClient }> {
  requireTool('qemu-system-x86_64');
  // QEMU serves one client per QMP socket: the driver gets its own, `qmpPath` stays free for operators' tools.
  const driverPath = `${qmpPath}.driver`;
  const child = group.spawn(name, 'qemu-system-x86_64', ['-name', name.replace(/ /g, '-'), '-M', 'none', '-nodefaults', '-display', 'none',
    '-qmp', `unix:${driverPath},server=on,wait=off`, '-qmp', `unix:${qmpPath},server=on,wait=off`]);
  // The socket appears once QEMU has initialised: a bounded retry on ENOENT, no event exists for it.
  const qmp = await Promise.race([
    QmpClient.connect(driverPath, { waitMs: 20_000 }),
    child.exited.then((e) => { throw new Error(`${name} exited (${e.code ?? e.signal}) before its QMP socket answered\n${child.tail()}`); }),
  ]);
  return { child, qmp };
}

function fileNode(path: string): { driver: string; filename: string } {
  return { driver: 'file', filename: path };
}

export interface SecondaryOptions {
  dir: string;
  /** NBD over a unix socket (default) or loopback TCP. */
  transport?: Transport;
  disk: string;
  format: Format;
  /** Extra `colo-blk secondary` arguments. */
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

/** Starts a secondary and its replication (the secondary always starts first). */
export async function startSecondary(group: ProcessGroup, impl: Impl, opts: SecondaryOptions): Promise<Secondary> {
  const socket = join(opts.dir, `secondary-${impl}.nbd`);
  const qmpPath = join(opts.dir, `secondary-${impl}.qmp`);
  const active = `${opts.disk}.active.qcow2`;
  const hidden = `${opts.disk}.hidden.qcow2`;
  const transport = opts.transport ?? 'unix';
  const side = (child: Child, qmp: QmpClient, nbd: NbdAddress, view: string): Secondary => ({
    impl, child, qmp, qmpPath, nbd, disk: opts.disk, format: opts.format, active, hidden, viewUri: nbdUri(nbd, view), parentUri: nbdUri(nbd, 'parent0'),
  });
  if (impl === 'colo-blk') {
    const asked: NbdAddress = transport === 'unix' ? { path: socket } : { host: '127.0.0.1', port: 0 };
    const child = group.colo('colo-blk secondary', [
      'secondary', '--disk', opts.disk, '--active', active, '--hidden', hidden,
      '--listen', listenArg(asked), '--qmp', qmpPath, ...(opts.args ?? []),
    ], opts.env);
    const ready = await child.waitReady();
    const qmp = await QmpClient.connect(qmpPath);
    return side(child, qmp, boundAddress(ready, asked), 'svm');
  }
  const size = await virtualSize(opts.disk, opts.format);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', hidden, String(size)]);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', active, String(size)]);
  const { child, qmp } = await launchQemu(group, 'qemu secondary', qmpPath);
  const nbd = await qemuNbdAddr(transport, socket);
  // The anchor's recipe (REPORT.md section 2).
  await qmp.execute('blockdev-add', { driver: opts.format, 'node-name': 'parent0', file: fileNode(opts.disk) });
  await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'hidden0', file: fileNode(hidden), backing: 'parent0' });
  await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'active0', file: fileNode(active), backing: 'hidden0' });
  await qmp.execute('blockdev-add', { driver: 'replication', 'node-name': 'childs0', mode: 'secondary', 'top-id': 'colo-disk0', file: 'active0' });
  await qmp.execute('blockdev-add', { driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['childs0'] });
  await qmp.execute('nbd-server-start', { addr: nbd.qmp });
  await qmp.execute('nbd-server-add', { device: 'parent0', writable: true });
  await qmp.execute('nbd-server-add', { device: 'colo-disk0', name: 'sec-top', writable: true });
  await qmp.execute('xen-set-replication', { enable: true, primary: false });
  return side(child, qmp, nbd.addr, 'sec-top');
}

export interface PrimaryOptions {
  dir: string;
  transport?: Transport;
  disk: string;
  format: Format;
  /** The secondary's NBD server (which exports parent0). */
  secondary: NbdAddress;
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

/** Starts a primary replicating into the secondary, and its replication. */
export async function startPrimary(group: ProcessGroup, impl: Impl, opts: PrimaryOptions): Promise<Primary> {
  const socket = join(opts.dir, `primary-${impl}.nbd`);
  const qmpPath = join(opts.dir, `primary-${impl}.qmp`);
  const transport = opts.transport ?? 'unix';
  if (impl === 'colo-blk') {
    const asked: NbdAddress = transport === 'unix' ? { path: socket } : { host: '127.0.0.1', port: 0 };
    const child = group.colo('colo-blk primary', [
      'primary', '--disk', opts.disk, '--secondary', nbdUri(opts.secondary, 'parent0'),
      '--listen', listenArg(asked), '--qmp', qmpPath, ...(opts.args ?? []),
    ], opts.env);
    const ready = await child.waitReady();
    const qmp = await QmpClient.connect(qmpPath);
    const nbd = boundAddress(ready, asked);
    return { impl, child, qmp, qmpPath, nbd, disk: opts.disk, format: opts.format, guestUri: nbdUri(nbd, 'pvm') };
  }
  const { child, qmp } = await launchQemu(group, 'qemu primary', qmpPath);
  const nbd = await qemuNbdAddr(transport, socket);
  const target = 'path' in opts.secondary
    ? { type: 'unix', path: opts.secondary.path }
    : { type: 'inet', host: opts.secondary.host, port: String(opts.secondary.port) };
  await qmp.execute('blockdev-add', { driver: opts.format, 'node-name': 'primary-disk0', file: fileNode(opts.disk) });
  await qmp.execute('nbd-server-start', { addr: nbd.qmp });
  await qmp.execute('blockdev-add', { driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['primary-disk0'] });
  await qmp.execute('nbd-server-add', { device: 'colo-disk0', name: 'pvm', writable: true });
  await qmp.execute('blockdev-add', { driver: 'replication', 'node-name': 'replication0', mode: 'primary', file: { driver: 'nbd', server: target, export: 'parent0' } });
  await qmp.execute('x-blockdev-change', { parent: 'colo-disk0', node: 'replication0' });
  await qmp.execute('xen-set-replication', { enable: true, primary: true });
  return { impl, child, qmp, qmpPath, nbd: nbd.addr, disk: opts.disk, format: opts.format, guestUri: nbdUri(nbd.addr, 'pvm') };
}

/**
 * Stops a side the clean way (colo-blk: SIGTERM; QEMU: QMP quit) and
 * returns the exit status.
 */
export async function stopSide(side: Side): Promise<number | null> {
  if (side.impl === 'qemu') {
    await side.qmp.execute('quit').catch(() => undefined);
  } else {
    side.child.proc.kill('SIGTERM');
  }
  const exit = await side.child.exited;
  await side.qmp.close().catch(() => undefined);
  return exit.code;
}

/** SIGKILL: no flush, no goodbye. */
export async function killSide(side: Side): Promise<void> {
  await side.child.kill('SIGKILL');
  await side.qmp.close().catch(() => undefined);
}

export async function virtualSize(path: string, format: Format): Promise<number> {
  const r = await runOk('qemu-img', ['info', '-U', '-f', format, '--output=json', path]);
  return (JSON.parse(r.stdout) as { 'virtual-size': number })['virtual-size'];
}
