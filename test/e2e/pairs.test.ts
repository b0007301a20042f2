/**
 * COLO pairs end to end, QEMU 7.2 or colo-blk on either side, each side its
 * own process: the same script (writes on both sides, checkpoints, SIGKILL of
 * the primary, failover, writes after it) runs first on a QEMU primary with
 * a QEMU secondary, then on every pair with colo-blk in it. Every pair must
 * match the byte model at every check and QEMU-with-QEMU byte for byte, and
 * its surviving disk is checked with qemu-img compare and with qemu-io
 * read -P over every byte.
 */
import assert from 'node:assert/strict';
import { copyFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { requireTool, runOk, tempDir } from '../helpers/env.js';
import { baseContent, checkQcow2, compareImages, firstDifference, modelImage, qemuIo, readAll, verifyEveryByte } from './model.js';
import { startPrimary, startSecondary, stopSide, type Format, type Impl } from './pair.js';
import { ProcessGroup } from './processes.js';
import { runScript, SIZE, type ScriptResult } from './scenario.js';

interface PairSpec {
  primary: Impl;
  primaryFormat: Format;
  secondary: Impl;
  secondaryFormat: Format;
}

interface PairOutcome extends ScriptResult {
  /** The surviving (secondary) disk after a clean stop. */
  disk: string;
  format: Format;
}

const name = (s: PairSpec): string => `${s.primary} primary (${s.primaryFormat}) with ${s.secondary} secondary (${s.secondaryFormat})`;

async function makeDisk(path: string, format: Format, content: Buffer, scratch: string): Promise<string> {
  if (format === 'raw') {
    writeFileSync(path, content);
  } else {
    writeFileSync(scratch, content);
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', scratch, path]);
  }
  return path;
}

/** Runs the script on one pair and checks its images on disk afterwards. */
async function runPair(spec: PairSpec, dir: ReturnType<typeof tempDir>): Promise<PairOutcome> {
  const tag = `${spec.primary}-${spec.secondary}`;
  const base = baseContent(SIZE);
  const primaryDisk = await makeDisk(dir.file(`${tag}-primary.${spec.primaryFormat}`), spec.primaryFormat, base, dir.file('base.raw'));
  const secondaryDisk = await makeDisk(dir.file(`${tag}-secondary.${spec.secondaryFormat}`), spec.secondaryFormat, base, dir.file('base.raw'));
  const group = new ProcessGroup();
  try {
    const secondary = await startSecondary(group, spec.secondary, { dir: dir.path, disk: secondaryDisk, format: spec.secondaryFormat });
    const primary = await startPrimary(group, spec.primary, { dir: dir.path, disk: primaryDisk, format: spec.primaryFormat, secondary: secondary.nbd });
    const result = await runScript(primary, secondary, base, dir.path, tag);
    assert.equal(await stopSide(secondary), 0, `${tag}: the secondary's exit status\n${group.report()}`);

    const expected = modelImage(dir.file(`${tag}-expected.raw`), result.model.view);
    assert.equal(await compareImages(expected, 'raw', secondaryDisk, spec.secondaryFormat), null, `${tag}: the surviving disk against the model`);
    await verifyEveryByte(secondaryDisk, spec.secondaryFormat, result.model.view);
    // The primary died by SIGKILL; qemu-io flushed every write it made, so all of it is on disk.
    const primaryExpected = modelImage(dir.file(`${tag}-primary-expected.raw`), result.model.primary);
    assert.equal(await compareImages(primaryExpected, 'raw', primaryDisk, spec.primaryFormat), null, `${tag}: the killed primary's disk`);
    for (const image of [secondary.active, secondary.hidden, ...[primaryDisk, secondaryDisk].filter((f) => f.endsWith('.qcow2'))]) {
      assert.equal(await checkQcow2(image), null);
    }
    return { ...result, disk: secondaryDisk, format: spec.secondaryFormat };
  } catch (err) {
    (err as Error).message += `\n${group.report()}`;
    throw err;
  } finally {
    await group.killAll();
  }
}

describe('COLO pairs as processes, QEMU 7.2 or colo-blk on either side', () => {
  const dir = tempDir('colo-blk-e2e-pairs-');
  let reference: PairOutcome;
  after(() => dir.cleanup());

  before(async () => {
    for (const tool of ['qemu-system-x86_64', 'qemu-img', 'qemu-io']) requireTool(tool);
    reference = await runPair({ primary: 'qemu', primaryFormat: 'raw', secondary: 'qemu', secondaryFormat: 'raw' }, dir);
    // Keep QEMU's surviving disk: every other pair's must equal it.
    copyFileSync(reference.disk, dir.file('reference.raw'));
  });

  const pairs: PairSpec[] = [
    { primary: 'qemu', primaryFormat: 'raw', secondary: 'colo-blk', secondaryFormat: 'qcow2' },
    { primary: 'colo-blk', primaryFormat: 'raw', secondary: 'qemu', secondaryFormat: 'raw' },
    { primary: 'colo-blk', primaryFormat: 'qcow2', secondary: 'colo-blk', secondaryFormat: 'raw' },
  ];
  for (const spec of pairs) {
    test(`${name(spec)}: byte for byte what QEMU with QEMU gives, and what the model says`, async () => {
      const outcome = await runPair(spec, dir);
      for (const [label, theirs] of reference.snapshots) {
        const ours = outcome.snapshots.get(label);
        assert.ok(ours, `no snapshot '${label}'`);
        assert.ok(ours.view.equals(theirs.view), `${label}: the view differs from QEMU's: ${firstDifference(ours.view, theirs.view)}`);
        if (theirs.primary) assert.ok(ours.primary?.equals(theirs.primary), `${label}: the primary's disk differs from QEMU's`);
        if (theirs.parent) assert.ok(ours.parent?.equals(theirs.parent), `${label}: the secondary disk differs from QEMU's`);
      }
      assert.equal(await compareImages(dir.file('reference.raw'), 'raw', outcome.disk, outcome.format), null, 'the surviving disk against QEMU-with-QEMU');
      await qemuIo(outcome.disk, outcome.format, ['read -P 0xaa 4M 128K', 'read -P 0xab 8388607 2'], true);
    });
  }

  test('an unaligned primary write reaches the secondary exactly from colo-blk; QEMU 7.2 zero-fills the rest of its sector', async () => {
    const base = baseContent(SIZE);
    const at = 3 * 1024 * 1024 + 1;
    for (const impl of ['qemu', 'colo-blk'] as const) {
      const group = new ProcessGroup();
      try {
        const primaryDisk = await makeDisk(dir.file(`unaligned-${impl}-p.raw`), 'raw', base, dir.file('base.raw'));
        const secondaryDisk = await makeDisk(dir.file(`unaligned-${impl}-s.raw`), 'raw', base, dir.file('base.raw'));
        const secondary = await startSecondary(group, 'colo-blk', { dir: dir.path, disk: secondaryDisk, format: 'raw' });
        const primary = await startPrimary(group, impl, { dir: dir.path, disk: primaryDisk, format: 'raw', secondary: secondary.nbd });
        await qemuIo(primary.guestUri, 'raw', [`write -P 0x13 ${at} 1`]);
        const expected = Buffer.from(base).fill(0x13, at, at + 1);
        const local = await readAll(primary.guestUri, 'raw', dir.file('unaligned-pvm.raw'));
        assert.ok(local.equals(expected), `${impl}: the primary's own disk: ${firstDifference(local, expected)}`);
        const replica = await readAll(secondary.parentUri, 'raw', dir.file('unaligned-parent.raw'));
        assert.deepEqual(await primary.qmp.execute('query-xen-replication-status'), { error: false });
        if (impl === 'colo-blk') {
          assert.ok(replica.equals(expected), `colo-blk: the secondary disk: ${firstDifference(replica, expected)}`);
        } else {
          // QEMU's replication filter takes 512-byte sectors; the padding read
          // fails on a primary (it never serves reads), QEMU's block layer
          // ignores that failure and sends the unread padding: a silently diverged pair.
          const sector = at & ~511;
          const zeroed = Buffer.from(expected).fill(0, sector, at).fill(0, at + 1, sector + 512);
          assert.ok(replica.equals(zeroed), `QEMU 7.2: the secondary disk: ${firstDifference(replica, zeroed)}`);
        }
      } finally {
        await group.killAll();
      }
    }
  });
});
