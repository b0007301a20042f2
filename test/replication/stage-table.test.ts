/**
 * Every cell of the operation x stage x mode table (spec 2.3), each on a
 * fresh pair of nodes. Cells where colo-blk deliberately differs from QEMU
 * say so; docs/replication.md explains why.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isAllocatedAbove } from '../../src/block/chain.js';
import { Status } from '../../src/block/node.js';
import type { FaultRule } from '../../src/drivers/fault.js';
import type { Stage } from '../../src/replication/stage.js';
import {
  MiB, expectPattern, fill, localFault, primaryFixture, secondaryFixture,
  type PrimaryFixture, type SecondaryFixture,
} from './fixtures.js';

const SIZE = 4 * MiB;

type Op = 'read' | 'write' | 'write-zeroes' | 'discard' | 'flush' | 'start(primary)' | 'start(secondary)'
  | 'checkpoint' | 'get-error' | 'stop(false)' | 'stop(true)';

const OPS: Op[] = ['read', 'write', 'write-zeroes', 'discard', 'flush', 'start(primary)', 'start(secondary)',
  'checkpoint', 'get-error', 'stop(false)', 'stop(true)'];

/** ok, optionally with the stage afterwards; or an error code / exact message. */
type Expect = { ok: true; stage?: Stage } | { code: string } | { message: string };

const OK: Expect = { ok: true };
const EIO: Expect = { code: 'EIO' };
const NOT_RUNNING: Expect = { message: 'Block replication is not running' };
const RUNNING_OR_DONE: Expect = { message: 'Block replication is running or done' };
const BACKUP_CANCELLED: Expect = { message: 'Backup job was cancelled unexpectedly' };
const IO_ERROR: Expect = { message: 'I/O error occurred' };

type SecondaryStage = Stage | 'done-after-stop';

const SECONDARY: Record<SecondaryStage, Record<Op, Expect>> = {
  none: {
    read: EIO, write: EIO, 'write-zeroes': EIO, discard: OK, flush: OK,
    'start(primary)': { message: "The parameter mode's value is invalid, needs 1, but got 0" },
    'start(secondary)': { ok: true, stage: 'running' },
    checkpoint: BACKUP_CANCELLED, 'get-error': NOT_RUNNING, 'stop(false)': NOT_RUNNING, 'stop(true)': NOT_RUNNING,
  },
  running: {
    read: OK, write: OK, 'write-zeroes': OK, discard: OK, flush: OK,
    'start(primary)': RUNNING_OR_DONE, 'start(secondary)': RUNNING_OR_DONE,
    checkpoint: OK, 'get-error': OK,
    // QEMU: DONE plus "Backup job was cancelled unexpectedly"; colo-blk stops cleanly.
    'stop(false)': { ok: true, stage: 'done' },
    'stop(true)': { ok: true, stage: 'failover' },
  },
  failover: {
    read: OK, write: OK, 'write-zeroes': OK, discard: OK, flush: OK,
    'start(primary)': { ok: true, stage: 'failover' }, 'start(secondary)': { ok: true, stage: 'failover' },
    checkpoint: { ok: true, stage: 'failover' },
    // QEMU reports a spurious "I/O error occurred" for the whole commit.
    'get-error': OK,
    'stop(false)': { ok: true, stage: 'failover' }, 'stop(true)': { ok: true, stage: 'failover' },
  },
  'failover-failed': {
    read: OK, write: OK, 'write-zeroes': OK, discard: OK, flush: OK,
    'start(primary)': RUNNING_OR_DONE, 'start(secondary)': RUNNING_OR_DONE,
    checkpoint: BACKUP_CANCELLED, 'get-error': IO_ERROR, 'stop(false)': NOT_RUNNING, 'stop(true)': NOT_RUNNING,
  },
  done: {
    read: OK, write: OK, 'write-zeroes': OK, discard: OK, flush: OK,
    'start(primary)': { ok: true, stage: 'done' }, 'start(secondary)': { ok: true, stage: 'done' },
    checkpoint: { ok: true, stage: 'done' }, 'get-error': OK,
    'stop(false)': { ok: true, stage: 'done' }, 'stop(true)': { ok: true, stage: 'done' },
  },
  'done-after-stop': {
    read: OK, write: OK, 'write-zeroes': OK, discard: OK, flush: OK,
    'start(primary)': { ok: true, stage: 'done' }, 'start(secondary)': { ok: true, stage: 'done' },
    checkpoint: { ok: true, stage: 'done' },
    // QEMU: "I/O error occurred" (latched by the backup cancel); colo-blk latches nothing.
    'get-error': OK,
    'stop(false)': { ok: true, stage: 'done' }, 'stop(true)': { ok: true, stage: 'done' },
  },
};

type PrimaryStage = 'none' | 'running' | 'done';

const PRIMARY: Record<PrimaryStage, Record<Op, Expect>> = {
  none: {
    read: EIO, write: EIO, 'write-zeroes': EIO, discard: OK, flush: OK,
    'start(primary)': { ok: true, stage: 'running' },
    'start(secondary)': { message: "The parameter mode's value is invalid, needs 0, but got 1" },
    checkpoint: OK, 'get-error': NOT_RUNNING, 'stop(false)': NOT_RUNNING, 'stop(true)': NOT_RUNNING,
  },
  running: {
    read: EIO, write: OK, 'write-zeroes': OK, discard: OK, flush: OK,
    'start(primary)': RUNNING_OR_DONE, 'start(secondary)': RUNNING_OR_DONE,
    checkpoint: OK, 'get-error': OK, 'stop(false)': { ok: true, stage: 'done' }, 'stop(true)': { ok: true, stage: 'done' },
  },
  done: {
    read: EIO, write: EIO, 'write-zeroes': EIO, discard: OK, flush: OK,
    'start(primary)': { ok: true, stage: 'done' }, 'start(secondary)': { ok: true, stage: 'done' },
    checkpoint: OK, 'get-error': OK, 'stop(false)': { ok: true, stage: 'done' }, 'stop(true)': { ok: true, stage: 'done' },
  },
};

interface Node {
  stage: Stage;
  start(m: 'primary' | 'secondary'): Promise<void>;
  checkpoint(): Promise<void>;
  getError(): void;
  stop(f: boolean): Promise<void>;
}

interface Io {
  read(o: number, b: Buffer): Promise<void>;
  write(o: number, b: Buffer): Promise<void>;
  writeZeroes(o: number, l: number): Promise<void>;
  discard(o: number, l: number): Promise<void>;
  flush(): Promise<void>;
}

function run(op: Op, node: Node, io: Io): Promise<void> {
  switch (op) {
    case 'read': return io.read(MiB, Buffer.alloc(64 * 1024));
    case 'write': return io.write(MiB, fill(64 * 1024, 0x5e));
    case 'write-zeroes': return io.writeZeroes(2 * MiB, 64 * 1024);
    case 'discard': return io.discard(0, SIZE);
    case 'flush': return io.flush();
    case 'start(primary)': return node.start('primary');
    case 'start(secondary)': return node.start('secondary');
    case 'checkpoint': return node.checkpoint();
    case 'get-error': return Promise.resolve().then(() => node.getError());
    case 'stop(false)': return node.stop(false);
    case 'stop(true)': return node.stop(true);
  }
}

async function check(op: Op, node: Node, io: Io, expect: Expect): Promise<void> {
  let outcome: unknown = null;
  try {
    await run(op, node, io);
  } catch (err) {
    outcome = err;
  }
  if ('ok' in expect) {
    assert.equal(outcome, null, `${op} should succeed, got ${String(outcome)}`);
    if (expect.stage) assert.equal(node.stage, expect.stage);
  } else if ('code' in expect) {
    assert.equal((outcome as { code?: string } | null)?.code, expect.code, `${op} should fail with ${expect.code}`);
  } else {
    assert.equal((outcome as Error | null)?.message, expect.message, `${op}`);
  }
}

interface Reached {
  f: SecondaryFixture;
  /** Lets a held failover finish before teardown. */
  release?: () => void;
}

/** Brings a fresh secondary to `stage`. Local is 0x11; the SVM wrote 0x33 at [0, 1M) and the primary 0x22 at [3M, 4M). */
async function reachSecondary(stage: SecondaryStage): Promise<Reached> {
  const f = await secondaryFixture('memory', { size: SIZE, faultyLocal: true });
  if (stage === 'none') return { f };
  await f.repl.start('secondary');
  await f.top.write(0, fill(MiB, 0x33));
  await f.localBB.write(3 * MiB, fill(MiB, 0x22));
  if (stage === 'running') return { f };
  if (stage === 'done-after-stop') {
    await f.repl.stop(false);
    return { f };
  }
  const fault = localFault(f);
  let rule: FaultRule | null = null;
  if (stage === 'failover') rule = fault.addRule({ op: 'write', hold: true });
  if (stage === 'failover-failed') rule = fault.addRule({ op: 'write', errno: 'EIO' });
  await f.repl.stop(true);
  if (stage === 'failover') {
    await rule!.waitForHits(1);
    return { f, release: () => rule!.remove() };
  }
  await f.repl.failoverSettled();
  rule?.remove();
  assert.equal(f.repl.stage, stage === 'done' ? 'done' : 'failover-failed');
  return { f };
}

describe('stage table, secondary', () => {
  for (const stage of Object.keys(SECONDARY) as SecondaryStage[]) {
    for (const op of OPS) {
      test(`${stage}: ${op}`, async () => {
        const { f, release } = await reachSecondary(stage);
        try {
          assert.equal(f.repl.stage, stage === 'done-after-stop' ? 'done' : stage);
          await check(op, f.repl, f.top, SECONDARY[stage][op]);
        } finally {
          release?.();
          await f.repl.failoverSettled();
          await f.cleanup();
        }
      });
    }
  }

  test('where each stage reads from and writes to', async () => {
    // RUNNING: reads see the view, writes land in the active disk only.
    let { f } = await reachSecondary('running');
    await expectPattern(f.top, 0, MiB, 0x33);
    await expectPattern(f.top, 3 * MiB, MiB, 0x11, 'hidden holds the old data');
    await f.top.writeZeroes(2 * MiB, 65536);
    const st = await f.active.blockStatus(2 * MiB, 65536);
    assert.equal(st.flags & (Status.ALLOCATED | Status.DATA), Status.ALLOCATED | Status.DATA, 'write-zeroes is a data write in active');
    await expectPattern(f.local, 2 * MiB, 65536, 0x11, 'the local disk is untouched');
    await f.top.discard(0, SIZE);
    await expectPattern(f.top, 0, MiB, 0x33, 'discard is a no-op');
    await f.cleanup();

    // DONE after failover: the node is the secondary disk.
    ({ f } = await reachSecondary('done'));
    await f.top.write(MiB, fill(65536, 0x55));
    await expectPattern(f.localBB, MiB, 65536, 0x55, 'writes go straight to the secondary disk');
    await f.cleanup();

    // DONE after a clean stop: the view is the primary's state, writes go to the secondary disk.
    ({ f } = await reachSecondary('done-after-stop'));
    await expectPattern(f.top, 0, MiB, 0x11, "the SVM's own writes are discarded");
    await expectPattern(f.top, 3 * MiB, MiB, 0x22, 'the primary data shows');
    await f.top.write(MiB, fill(65536, 0x56));
    await expectPattern(f.localBB, MiB, 65536, 0x56);
    await f.cleanup();

    // FAILOVER_FAILED: the chain is intact and nothing was committed.
    ({ f } = await reachSecondary('failover-failed'));
    assert.equal(f.repl.file, f.active);
    assert.equal((await isAllocatedAbove(f.active, f.local, 0, MiB)).allocated, true);
    await expectPattern(f.top, 0, MiB, 0x33);
    await expectPattern(f.top, 3 * MiB, MiB, 0x11);
    await f.cleanup();
  });
});

async function reachPrimary(stage: PrimaryStage): Promise<PrimaryFixture> {
  const f = await primaryFixture('memory', { size: SIZE });
  if (stage !== 'none') await f.repl.start('primary');
  if (stage === 'done') await f.repl.stop(false);
  return f;
}

describe('stage table, primary', () => {
  for (const stage of Object.keys(PRIMARY) as PrimaryStage[]) {
    for (const op of OPS) {
      test(`${stage}: ${op}`, async () => {
        const f = await reachPrimary(stage);
        try {
          await check(op, f.repl, f.bb, PRIMARY[stage][op]);
          // The writer is answered before the forwarded write lands (the forwarding window); drain waits for it.
          await f.repl.drain();
          if (stage === 'running' && op === 'write') await expectPattern(f.disk, MiB, 64 * 1024, 0x5e, 'forwarded');
          if (stage === 'running' && op === 'write-zeroes') await expectPattern(f.disk, 2 * MiB, 64 * 1024, 0, 'zeroes forwarded');
        } finally {
          await f.cleanup();
        }
      });
    }
  }
});
