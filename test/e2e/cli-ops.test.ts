/**
 * The operator's shortcuts (`colo-blk status|checkpoint|failover --qmp`) as
 * processes against QEMU 7.2 and colo-blk sides alike.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { CLI, requireTool, run, tempDir } from '../helpers/env.js';
import { MiB, qemuIo } from './model.js';
import { killSide, startPrimary, startSecondary, stopSide, type Impl } from './pair.js';
import { ProcessGroup } from './processes.js';

const SIZE = 8 * MiB;

async function colo(...args: string[]): Promise<{ status: number; out: Record<string, unknown>; stderr: string }> {
  const r = await run(process.execPath, [CLI, ...args]);
  let out: Record<string, unknown> = {};
  try {
    out = JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    // Failures print nothing on stdout.
  }
  return { status: r.status, out, stderr: r.stderr };
}

for (const impl of ['qemu', 'colo-blk'] as Impl[]) {
  test(`colo-blk failover on a ${impl} primary whose secondary died drops the replication link`, async () => {
    requireTool('qemu-system-x86_64');
    const dir = tempDir('colo-blk-e2e-ops-');
    const group = new ProcessGroup();
    try {
      writeFileSync(dir.file('p.raw'), Buffer.alloc(SIZE, 1));
      writeFileSync(dir.file('s.raw'), Buffer.alloc(SIZE, 1));
      const secondary = await startSecondary(group, 'colo-blk', { dir: dir.path, disk: dir.file('s.raw'), format: 'raw' });
      const primary = await startPrimary(group, impl, { dir: dir.path, disk: dir.file('p.raw'), format: 'raw', secondary: secondary.nbd });
      const qmpPath = primary.qmpPath;
      await qemuIo(primary.guestUri, 'raw', ['write -P 0x11 0 1M']);
      await killSide(secondary);
      await qemuIo(primary.guestUri, 'raw', ['write -P 0x22 1M 1M']);
      assert.deepEqual((await colo('status', '--qmp', qmpPath)).out.status, { error: true, desc: 'I/O error occurred' });

      const r = await colo('failover', '--qmp', qmpPath);
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(r.out, { role: 'primary', replication: 'removed' });
      // No replication node is left: QEMU's status for none at all is "no error".
      assert.deepEqual((await colo('status', '--qmp', qmpPath)).out.status, { error: false });
      const nodes = await primary.qmp.execute<Array<{ 'node-name': string; drv: string }>>('query-named-block-nodes');
      assert.ok(!nodes.some((n) => n.drv === 'replication' || n.drv === 'nbd'), JSON.stringify(nodes.map((n) => n.drv)));
      await qemuIo(primary.guestUri, 'raw', ['write -P 0x33 2M 1M', 'read -P 0x11 0 1M', 'read -P 0x22 1M 1M', 'read -P 0x33 2M 1M']);
      assert.equal(await stopSide(primary), 0);
      if (impl === 'colo-blk') assert.doesNotMatch(primary.child.stderr(), /remote-flush-failed|shutdown-failed/);
    } catch (err) {
      (err as Error).message += `\n${group.report()}`;
      throw err;
    } finally {
      await group.killAll();
      dir.cleanup();
    }
  });
}

test('colo-blk checkpoint and failover on a QEMU secondary, status on both kinds', async () => {
  requireTool('qemu-system-x86_64');
  const dir = tempDir('colo-blk-e2e-ops-');
  const group = new ProcessGroup();
  try {
    writeFileSync(dir.file('p.raw'), Buffer.alloc(SIZE, 1));
    writeFileSync(dir.file('s.raw'), Buffer.alloc(SIZE, 1));
    const secondary = await startSecondary(group, 'qemu', { dir: dir.path, disk: dir.file('s.raw'), format: 'raw' });
    const primary = await startPrimary(group, 'colo-blk', { dir: dir.path, disk: dir.file('p.raw'), format: 'raw', secondary: secondary.nbd });
    const sq = secondary.qmpPath;
    const pq = primary.qmpPath;
    await qemuIo(primary.guestUri, 'raw', ['write -P 0x11 0 1M']);
    await qemuIo(secondary.viewUri, 'raw', ['write -P 0x22 4M 1M']);
    const ck = await colo('checkpoint', '--qmp', sq, '--primary-qmp', pq);
    assert.equal(ck.status, 0, ck.stderr);
    assert.equal(typeof ck.out['total-ms'], 'number');
    await qemuIo(secondary.viewUri, 'raw', ['read -P 0x11 0 1M', 'read -P 1 4M 1M'], true);
    const st = await colo('status', '--qmp', pq);
    assert.equal(st.status, 0);
    assert.deepEqual(st.out.status, { error: false });
    assert.equal((st.out.nodes as Array<{ mode: string }>)[0]!.mode, 'primary');
    assert.deepEqual((await colo('status', '--qmp', sq)).out, { status: { error: false } });
    await qemuIo(primary.guestUri, 'raw', ['write -P 0x33 0 1M']);
    await qemuIo(secondary.viewUri, 'raw', ['write -P 0x44 2M 1M']);
    await killSide(primary);
    const fo = await colo('failover', '--qmp', sq);
    assert.equal(fo.status, 0, fo.stderr);
    assert.equal(fo.out.role, 'secondary');
    assert.equal(fo.out.stage, 'done');
    await qemuIo(secondary.viewUri, 'raw', ['read -P 0x11 0 1M', 'read -P 0x44 2M 1M', 'read -P 1 4M 1M'], true);
  } catch (err) {
    (err as Error).message += `\n${group.report()}`;
    throw err;
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});
