/**
 * SIGTERM in every stage, with writes still in flight: the daemon answers
 * what it accepted, flushes, closes every image and exits 0. Afterwards
 * `qemu-img check` finds every qcow2 image clean and every write it
 * acknowledged (never flushed by the client) is where it belongs: on the
 * secondary disk, in the view's overlays, on the primary's disk.
 *
 *   secondary: stage none (a `colo-blk daemon` with the recipe, never
 *   started), running, after a failover; primary: running, and with its
 *   secondary dead.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { failoverSecondary } from '../../src/control/colo-ops.js';
import { QmpClient } from '../../src/control/qmp-client.js';
import { setLogLevel } from '../../src/util/log.js';
import { requireTool, runOk, tempDir } from '../helpers/env.js';
import { chainSpec, connect, qcow2With, slotReads, writeStream } from './io.js';
import { baseContent, checkQcow2, MiB, patternReads, qemuIo } from './model.js';
import { nbdUri } from './pair.js';
import { ProcessGroup, type Child } from './processes.js';

const SIZE = 16 * MiB;
const base = baseContent(SIZE);
// This process's NBD clients see the daemons go away on purpose.
setLogLevel('error');

/** SIGTERM once `after` writes of a stream were acknowledged. */
function signalAfter(child: Child, after: number): (n: number) => void {
  let sent = false;
  return (n) => {
    if (!sent && n >= after) {
      sent = true;
      child.proc.kill('SIGTERM');
    }
  };
}

async function emptyQcow2(path: string): Promise<string> {
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(SIZE)]);
  return path;
}

async function assertClean(...images: string[]): Promise<void> {
  for (const image of images) assert.equal(await checkQcow2(image), null);
}

function setup(): { dir: ReturnType<typeof tempDir>; group: ProcessGroup } {
  requireTool('qemu-img');
  requireTool('qemu-io');
  return { dir: tempDir('colo-blk-e2e-sigterm-'), group: new ProcessGroup() };
}

async function startSecondary(group: ProcessGroup, dir: ReturnType<typeof tempDir>): Promise<{ child: Child; disk: string; active: string; hidden: string; sock: string; qmp: string }> {
  const disk = await qcow2With(dir.file('s.qcow2'), base, dir.file('scratch.raw'));
  const active = dir.file('active.qcow2');
  const hidden = dir.file('hidden.qcow2');
  const sock = dir.file('s.nbd');
  const qmp = dir.file('s.qmp');
  const child = group.colo('secondary', ['secondary', '--disk', disk, '--active', active, '--hidden', hidden, '--listen', `unix:${sock}`, '--qmp', qmp]);
  await child.waitReady();
  return { child, disk, active, hidden, sock, qmp };
}

test('secondary in stage none (replication never started): SIGTERM keeps every acknowledged write', async () => {
  const { dir, group } = setup();
  try {
    const disk = await qcow2With(dir.file('s.qcow2'), base, dir.file('scratch.raw'));
    const sock = dir.file('s.nbd');
    const file = (filename: string): Record<string, string> => ({ driver: 'file', filename });
    const child = group.colo('daemon', [
      'daemon',
      '--blockdev', JSON.stringify({ driver: 'qcow2', 'node-name': 'parent0', file: file(disk) }),
      '--blockdev', JSON.stringify({ driver: 'qcow2', 'node-name': 'hidden0', file: file(await emptyQcow2(dir.file('hidden.qcow2'))), backing: 'parent0' }),
      '--blockdev', JSON.stringify({ driver: 'qcow2', 'node-name': 'active0', file: file(await emptyQcow2(dir.file('active.qcow2'))), backing: 'hidden0' }),
      '--blockdev', JSON.stringify({ driver: 'replication', 'node-name': 'childs0', mode: 'secondary', 'top-id': 'colo-disk0', file: 'active0' }),
      '--blockdev', JSON.stringify({ driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': 1, children: ['childs0'] }),
      '--nbd-server', `addr.type=unix,addr.path=${sock}`,
      '--export', 'type=nbd,id=parent0,node-name=parent0,writable=on',
      '--export', 'type=nbd,id=svm,node-name=colo-disk0,writable=on',
      '--qmp', `unix:${dir.file('s.qmp')}`,
    ]);
    await child.waitReady();
    const qmp = await QmpClient.connect(dir.file('s.qmp'));
    assert.deepEqual(await qmp.execute('query-xen-replication-status'), { error: true, desc: 'Block replication is not running' });
    await qmp.close();
    const acked = await writeStream(await connect(sock, 'parent0'), 0, 128, 1, signalAfter(child, 16));
    assert.equal((await child.exited).code, 0, child.tail());
    assert.ok(acked.length >= 16);
    await assertClean(disk, dir.file('hidden.qcow2'), dir.file('active.qcow2'));
    await qemuIo(disk, 'qcow2', slotReads(acked, 1), true);
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});

test('secondary running: SIGTERM with writes in flight into the disk and the view', async () => {
  const { dir, group } = setup();
  try {
    const s = await startSecondary(group, dir);
    const stop = signalAfter(s.child, 24);
    // Both connected before either stream starts: the signal may come after the first stream's 24th write.
    const [disk, view] = [await connect(s.sock, 'parent0'), await connect(s.sock, 'svm')];
    const [intoDisk, intoView] = await Promise.all([
      writeStream(disk, 0, 64, 2, stop),
      writeStream(view, 128, 64, 3, stop),
    ]);
    assert.equal((await s.child.exited).code, 0, s.child.tail());
    await assertClean(s.disk, s.active, s.hidden);
    // The primary's writes are on the disk; the view kept the old data there (saved in hidden) and has its own writes.
    await qemuIo(s.disk, 'qcow2', [...slotReads(intoDisk, 2), ...patternReads(base.subarray(8 * MiB, 12 * MiB), 8 * MiB)], true);
    const viewChain = chainSpec(s.active, s.hidden, s.disk, 'qcow2');
    await qemuIo(viewChain, 'qcow2', [...slotReads(intoView, 3), ...patternReads(base.subarray(0, 4 * MiB))], true);
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});

test('secondary after failover: SIGTERM with view writes in flight, which now land on the disk', async () => {
  const { dir, group } = setup();
  try {
    const s = await startSecondary(group, dir);
    // Before the failover: a primary write (rolled back by it) and a view write (kept).
    await qemuIo(nbdUri(s.sock, 'parent0'), 'raw', ['write -P 0x41 0 1M']);
    await qemuIo(nbdUri(s.sock, 'svm'), 'raw', ['write -P 0x42 4M 1M']);
    const qmp = await QmpClient.connect(s.qmp);
    assert.equal((await failoverSecondary(qmp)).stage, 'done');
    await qmp.close();
    const acked = await writeStream(await connect(s.sock, 'svm'), 128, 128, 4, signalAfter(s.child, 24));
    assert.equal((await s.child.exited).code, 0, s.child.tail());
    await assertClean(s.disk, s.active, s.hidden);
    await qemuIo(s.disk, 'qcow2', [...patternReads(base.subarray(0, MiB)), 'read -P 0x42 4M 1M', ...slotReads(acked, 4)], true);
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});

async function startPair(group: ProcessGroup, dir: ReturnType<typeof tempDir>): Promise<{ s: Awaited<ReturnType<typeof startSecondary>>; p: Child; disk: string; sock: string; qmp: string }> {
  const s = await startSecondary(group, dir);
  const disk = await qcow2With(dir.file('p.qcow2'), base, dir.file('scratch.raw'));
  const sock = dir.file('p.nbd');
  const qmp = dir.file('p.qmp');
  const p = group.colo('primary', ['primary', '--disk', disk, '--secondary', nbdUri(s.sock, 'parent0'), '--listen', `unix:${sock}`, '--qmp', qmp], { COLO_BLK_LOG_LEVEL: 'warn' });
  await p.waitReady();
  return { s, p, disk, sock, qmp };
}

test('primary running: SIGTERM with guest writes in flight; they are on both disks', async () => {
  const { dir, group } = setup();
  try {
    const { s, p, disk, sock } = await startPair(group, dir);
    const acked = await writeStream(await connect(sock, 'pvm'), 0, 128, 5, signalAfter(p, 24));
    assert.equal((await p.exited).code, 0, p.tail());
    await assertClean(disk);
    await qemuIo(disk, 'qcow2', slotReads(acked, 5), true);
    // Quorum acknowledged each write only after the secondary had it too.
    await qemuIo(nbdUri(s.sock, 'parent0'), 'raw', slotReads(acked, 5), true);
    assert.equal((await s.child.kill('SIGTERM')).code, 0, s.child.tail());
    await assertClean(s.disk, s.active, s.hidden);
    await qemuIo(s.disk, 'qcow2', slotReads(acked, 5), true);
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});

test('primary with its secondary dead: writes still succeed, the status says so, SIGTERM exits cleanly', async () => {
  const { dir, group } = setup();
  try {
    const { s, p, disk, sock, qmp } = await startPair(group, dir);
    await s.child.kill('SIGKILL');
    const client = await QmpClient.connect(qmp);
    let status: unknown;
    const acked = await writeStream(await connect(sock, 'pvm'), 0, 128, 6, (n) => {
      if (n !== 16) return;
      void client.execute('query-xen-replication-status').then((st) => {
        status = st;
        p.proc.kill('SIGTERM');
      });
    });
    assert.equal((await p.exited).code, 0, p.tail());
    assert.deepEqual(status, { error: true, desc: 'I/O error occurred' });
    // The dead link is a warning at shutdown, not a failed shutdown.
    assert.match(p.stderr(), /"level":"warn","event":"daemon.remote-flush-failed"/);
    assert.doesNotMatch(p.stderr(), /shutdown-failed/);
    await client.close();
    await assertClean(disk);
    await qemuIo(disk, 'qcow2', slotReads(acked, 6), true);
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});

test('secondary during the failover commit: SIGTERM stops it cleanly and the overlays still give the failover result', async () => {
  const { dir, group } = setup();
  try {
    const s = await startSecondary(group, dir);
    // Much to commit: the primary rewrote the whole disk since the checkpoint, the view wrote half of it.
    await qemuIo(nbdUri(s.sock, 'parent0'), 'raw', ['write -P 0x51 0 16M']);
    await qemuIo(nbdUri(s.sock, 'svm'), 'raw', ['write -P 0x52 0 8M']);
    const expected = Buffer.from(base).fill(0x52, 0, 8 * MiB);
    const qmp = await QmpClient.connect(s.qmp);
    await qmp.execute('nbd-server-remove', { name: 'parent0', mode: 'hard' });
    await qmp.execute('xen-set-replication', { enable: false, primary: false, failover: true });
    s.child.proc.kill('SIGTERM');
    assert.equal((await s.child.exited).code, 0, s.child.tail());
    await qmp.close();
    await assertClean(s.disk, s.active, s.hidden);
    // Committed or not, committing the overlays (docs/operations.md) gives the failover's result.
    await runOk('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', s.disk, '-F', 'qcow2', s.hidden]);
    await runOk('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', s.hidden, '-F', 'qcow2', s.active]);
    await runOk('qemu-img', ['commit', '-q', '-f', 'qcow2', '-b', s.disk, s.active]);
    await qemuIo(s.disk, 'qcow2', patternReads(expected), true);
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});
