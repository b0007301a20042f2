/**
 * Daemons restarted on the images a SIGKILL left behind (docs/operations.md,
 * "Restarting after a crash"):
 *
 * - a secondary finds data in its overlays, which means the earlier run did
 *   not end at a checkpoint: it refuses to start over them (they hold the
 *   only copy of the last checkpoint) and changes nothing; the documented
 *   qemu-img recovery turns them into the last checkpoint plus the view's
 *   writes; `--discard-overlays` starts afresh and reports what it dropped;
 * - a primary opens its disk again, a qcow2 left dirty by a killed QEMU is
 *   repaired on open, every write flushed before the kill is there, and it
 *   replicates into a re-seeded secondary.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { checkpointPair, type ReplicationNodeInfo } from '../../src/control/colo-ops.js';
import { QmpClient } from '../../src/control/qmp-client.js';
import { setLogLevel } from '../../src/util/log.js';
import { requireTool, run, runOk, tempDir } from '../helpers/env.js';
import { connect, qcow2With, slotReads, writeStream } from './io.js';
import { baseContent, checkQcow2, compareImages, MiB, modelImage, PairModel, qemuIo } from './model.js';
import { killSide, listenArg, nbdUri, startPrimary, startSecondary } from './pair.js';
import { ProcessGroup, waitForFile } from './processes.js';

const SIZE = 16 * MiB;
setLogLevel('error');

function sha(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** `qemu-img check`: no corruption (leaks of an interrupted allocation are allowed after a SIGKILL). */
async function assertNotCorrupt(path: string): Promise<void> {
  const r = await run('qemu-img', ['check', '-U', path]);
  assert.ok(r.status === 0 || r.status === 3, `${path}: ${r.stdout}${r.stderr}`);
}

test('a secondary restarted after SIGKILL refuses its leftover overlays; they recover the last checkpoint; --discard-overlays starts afresh', async () => {
  requireTool('qemu-img');
  const dir = tempDir('colo-blk-e2e-restart-');
  const group = new ProcessGroup();
  try {
    const base = baseContent(SIZE);
    const model = new PairModel(base);
    writeFileSync(dir.file('p.raw'), base);
    const disk = await qcow2With(dir.file('s.qcow2'), base, dir.file('scratch.raw'));
    const secondary = await startSecondary(group, 'colo-blk', { dir: dir.path, disk, format: 'qcow2' });
    const primary = await startPrimary(group, 'colo-blk', { dir: dir.path, disk: dir.file('p.raw'), format: 'raw', secondary: secondary.nbd });
    const primaryWrite = async (pattern: number, offset: number, length: number): Promise<void> => {
      await qemuIo(primary.guestUri, 'raw', [`write -P ${pattern} ${offset} ${length}`]);
      model.primaryWrite('write', offset, length, pattern);
    };
    const viewWrite = async (pattern: number, offset: number, length: number): Promise<void> => {
      await qemuIo(secondary.viewUri, 'raw', [`write -P ${pattern} ${offset} ${length}`]);
      model.viewWrite('write', offset, length, pattern);
    };
    await primaryWrite(0x11, 0, 2 * MiB);
    await viewWrite(0x22, 4 * MiB, MiB);
    await checkpointPair(secondary.qmp, primary.qmp);
    model.checkpoint();
    await primaryWrite(0x33, MiB, 2 * MiB);
    await viewWrite(0x44, 6 * MiB, 512 * 1024);
    const diskAtDeath = Buffer.from(model.primary);

    await killSide(secondary);
    // The primary carries on alone and says it lost its secondary.
    await primaryWrite(0x55, 8 * MiB, MiB);
    assert.deepEqual(await primary.qmp.execute('query-xen-replication-status'), { error: true, desc: 'I/O error occurred' });
    for (const image of [disk, secondary.active, secondary.hidden]) await assertNotCorrupt(image);

    // Restarted as it was: refused, nothing touched.
    const files = [disk, secondary.active, secondary.hidden];
    const before = files.map(sha);
    const again = group.colo('secondary again', ['secondary', '--disk', disk, '--active', secondary.active, '--hidden', secondary.hidden, '--listen', `unix:${dir.file('again.nbd')}`]);
    const exit = await again.exited;
    assert.equal(exit.code, 1, again.stderr());
    assert.equal(again.stdout(), '');
    const message = again.stderr().split('\n').filter((l) => l !== '' && !l.startsWith('{'));
    assert.equal(message.length, 1, again.stderr());
    assert.match(message[0]!, /^colo-blk secondary: --disk: .*s\.qcow2 may no longer match the primary's disk: its overlays hold [\d.]+ [KM]iB \(\d+ bytes\) from an earlier run that did not end at a checkpoint \(active \d+, hidden \d+ bytes\); copy the primary's disk over it and delete both overlays, or add --discard-overlays if the primary lost no write while this secondary was down$/);
    assert.deepEqual(files.map(sha), before, 'the refused restart changed an image');

    // Both sides lost: the recovery in docs/operations.md gives the last checkpoint plus the view's writes.
    const rec = { disk: dir.file('rec.qcow2'), hidden: dir.file('rec-hidden.qcow2'), active: dir.file('rec-active.qcow2') };
    copyFileSync(disk, rec.disk);
    copyFileSync(secondary.hidden, rec.hidden);
    copyFileSync(secondary.active, rec.active);
    await runOk('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', rec.disk, '-F', 'qcow2', rec.hidden]);
    await runOk('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', rec.hidden, '-F', 'qcow2', rec.active]);
    await runOk('qemu-img', ['commit', '-f', 'qcow2', '-b', rec.disk, rec.active]);
    assert.equal(await compareImages(modelImage(dir.file('view.raw'), model.view), 'raw', rec.disk, 'qcow2'), null, 'the recovered disk');

    // --discard-overlays: starts, says what it dropped, and serves the disk as it is.
    const fresh = group.colo('secondary fresh', ['secondary', '--disk', disk, '--active', secondary.active, '--hidden', secondary.hidden,
      '--listen', `unix:${dir.file('fresh.nbd')}`, '--qmp', dir.file('fresh.qmp'), '--discard-overlays'], { COLO_BLK_LOG_LEVEL: 'warn' });
    const ready = await fresh.waitReady();
    const dropped = ready['discarded-bytes'] as { active: number; hidden: number };
    assert.ok(dropped.active > 0 && dropped.hidden > 0, JSON.stringify(ready));
    assert.match(fresh.stderr(), /"level":"warn","event":"secondary.overlays-discarded"/);
    const qmp = await QmpClient.connect(dir.file('fresh.qmp'));
    assert.deepEqual(await qmp.execute('query-xen-replication-status'), { error: false });
    const [node] = await qmp.execute<ReplicationNodeInfo[]>('x-colo-blk-query-replication');
    assert.equal(node!.stage, 'running');
    assert.equal(node!['active-bytes'], 0);
    assert.equal(node!['hidden-bytes'], 0);
    assert.equal(await compareImages(modelImage(dir.file('at-death.raw'), diskAtDeath), 'raw', nbdUri(dir.file('fresh.nbd'), 'svm'), 'raw'), null, 'the view of the restarted secondary');
    await qmp.close();
    assert.equal((await fresh.kill('SIGTERM')).code, 0, fresh.tail());
    for (const image of files) assert.equal(await checkQcow2(image), null);
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});

test('a primary restarted after SIGKILL keeps what was flushed; a qcow2 left dirty by a killed QEMU is repaired on open', async () => {
  requireTool('qemu-nbd');
  const dir = tempDir('colo-blk-e2e-restart-p-');
  const group = new ProcessGroup();
  try {
    // A primary of ours, killed with flushed and unflushed writes behind it.
    const base = baseContent(SIZE);
    const disk = await qcow2With(dir.file('p.qcow2'), base, dir.file('scratch.raw'));
    writeFileSync(dir.file('s1.raw'), base);
    const s1 = await startSecondary(group, 'colo-blk', { dir: dir.path, disk: dir.file('s1.raw'), format: 'raw' });
    const p1 = await startPrimary(group, 'colo-blk', { dir: dir.path, disk, format: 'qcow2', secondary: s1.nbd });
    const client = await connect(p1.nbd, 'pvm');
    const flushed = await writeStream(client, 0, 32, 7, () => undefined);
    await client.flush();
    let killed = false;
    await writeStream(client, 64, 64, 8, (n) => {
      if (n === 8 && !killed) {
        killed = true;
        void killSide(p1);
      }
    });
    await p1.child.exited;
    await killSide(s1);
    await assertNotCorrupt(disk);
    await qemuIo(disk, 'qcow2', slotReads(flushed, 7), true);

    // Restarted against a secondary re-seeded from its disk: it opens, replicates, and reports no error.
    await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, dir.file('s2.raw')]);
    const s2 = await startSecondary(group, 'colo-blk', { dir: dir.path, disk: dir.file('s2.raw'), format: 'raw' });
    const p2 = await startPrimary(group, 'colo-blk', { dir: dir.path, disk, format: 'qcow2', secondary: s2.nbd });
    assert.deepEqual(await p2.qmp.execute('query-xen-replication-status'), { error: false });
    await qemuIo(p2.guestUri, 'raw', ['write -P 0x66 12M 1M', ...slotReads(flushed, 7)]);
    await qemuIo(s2.parentUri, 'raw', ['read -P 0x66 12M 1M', ...slotReads(flushed, 7)], true);
    await killSide(s2);
    assert.equal((await p2.child.kill('SIGTERM')).code, 0, p2.child.tail());
    await p2.qmp.close();

    // A qcow2 image with lazy refcounts that QEMU was writing when it was killed: dirty, refcounts missing.
    const dirty = dir.file('dirty.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', dirty, String(SIZE)]);
    const nbd = group.spawn('qemu-nbd', 'qemu-nbd', ['-f', 'qcow2', '-k', dir.file('q.sock'), '-t', '--pid-file', dir.file('q.pid'), dirty]);
    await waitForFile(dir.file('q.pid'), nbd);
    await qemuIo(nbdUri(dir.file('q.sock'), ''), 'raw', ['write -P 0x77 0 3M']);
    await nbd.kill('SIGKILL');
    assert.equal((await run('qemu-img', ['check', dirty])).status, 2, 'QEMU left the refcounts behind');
    writeFileSync(dir.file('s3.raw'), Buffer.alloc(SIZE));
    await qemuIo(dir.file('s3.raw'), 'raw', ['write -P 0x77 0 3M']);
    const s3 = await startSecondary(group, 'colo-blk', { dir: dir.path, disk: dir.file('s3.raw'), format: 'raw' });
    const p3 = await startPrimary(group, 'colo-blk', { dir: dir.path, disk: dirty, format: 'qcow2', secondary: s3.nbd });
    await qemuIo(p3.guestUri, 'raw', ['read -P 0x77 0 3M', 'write -P 0x78 4M 1M'], false);
    await killSide(s3);
    assert.equal((await p3.child.kill('SIGTERM')).code, 0, p3.child.tail());
    await p3.qmp.close();
    assert.equal(await checkQcow2(dirty), null);
    await qemuIo(dirty, 'qcow2', ['read -P 0x77 0 3M', 'read -P 0x78 4M 1M'], true);
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});

test('a primary with --reconnect-delay waits out a secondary restarted with --discard-overlays: nothing lost, nothing latched', async () => {
  const dir = tempDir('colo-blk-e2e-reconnect-');
  const group = new ProcessGroup();
  try {
    const base = baseContent(SIZE);
    writeFileSync(dir.file('p.raw'), base);
    writeFileSync(dir.file('s.raw'), base);
    const secondary = await startSecondary(group, 'colo-blk', { dir: dir.path, disk: dir.file('s.raw'), format: 'raw' });
    const primary = await startPrimary(group, 'colo-blk', {
      dir: dir.path, disk: dir.file('p.raw'), format: 'raw', secondary: secondary.nbd, args: ['--reconnect-delay', '60'],
    });
    const client = await connect(primary.nbd, 'pvm');
    let restarted: Promise<unknown> | null = null;
    // The secondary dies with guest writes in flight; they wait, then go to the restarted one.
    const acked = await writeStream(client, 0, 128, 9, (n) => {
      if (n !== 16 || restarted) return;
      restarted = killSide(secondary).then(async () => {
        const again = group.colo('secondary again', ['secondary', '--disk', secondary.disk, '--active', secondary.active, '--hidden', secondary.hidden,
          '--listen', listenArg(secondary.nbd), '--discard-overlays']);
        return again.waitReady();
      });
    });
    await restarted;
    assert.equal(acked.length, 128, 'every write was acknowledged');
    await client.flush();
    assert.deepEqual(await primary.qmp.execute('query-xen-replication-status'), { error: false });
    assert.equal(await compareImages(primary.guestUri, 'raw', secondary.parentUri, 'raw'), null, 'the pair after the restart');
  } catch (err) {
    (err as Error).message += `\n${group.report()}`;
    throw err;
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});
