/**
 * Every case of QEMU's tests/unit/test-replication.c, in its order, with the
 * corrected expectations of the spec (section 8): exact byte comparisons,
 * read buffers pre-filled with something else, and 0x11 where QEMU really
 * returns 0x11 after a failover (the C test says 0x22 and passes only
 * because it compares with `<= 0`).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  DISK_KINDS, MiB, expectPattern, expectReadFails, fill, primaryFixture, secondaryFixture,
} from './fixtures.js';

const IMG_SIZE = 64 * MiB;

for (const kind of DISK_KINDS) {
  describe(`test-replication (${kind})`, () => {
    test('/replication/primary/read', async () => {
      const f = await primaryFixture(kind);
      try {
        await expectReadFails(f.bb, 0, IMG_SIZE);
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/primary/write', async () => {
      const f = await primaryFixture(kind);
      try {
        await assert.rejects(f.bb.write(0, fill(IMG_SIZE, 0)), { code: 'EIO' });
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/primary/start', async () => {
      const f = await primaryFixture(kind);
      try {
        await f.registry.startAll('primary');
        await expectReadFails(f.bb, 0, IMG_SIZE);
        await f.bb.write(0, fill(IMG_SIZE, 0x22));
        // The write was forwarded to the primary's file.
        await expectPattern(f.disk, 0, IMG_SIZE, 0x22, 'forwarded');
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/primary/stop', async () => {
      const f = await primaryFixture(kind);
      try {
        await f.registry.startAll('primary');
        await f.registry.stopAll(true);
        assert.equal(f.repl.stage, 'done');
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/primary/do_checkpoint', async () => {
      const f = await primaryFixture(kind);
      try {
        await f.registry.startAll('primary');
        await f.registry.checkpointAll();
        assert.equal(f.repl.stage, 'running');
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/primary/get_error_all', async () => {
      const f = await primaryFixture(kind);
      try {
        await f.registry.startAll('primary');
        f.registry.getErrorAll();
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/secondary/read', async () => {
      const f = await secondaryFixture(kind);
      try {
        await expectReadFails(f.top, 0, IMG_SIZE);
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/secondary/write', async () => {
      const f = await secondaryFixture(kind);
      try {
        await assert.rejects(f.top.write(0, fill(IMG_SIZE, 0)), { code: 'EIO' });
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/secondary/start', async () => {
      const f = await secondaryFixture(kind);
      try {
        await f.registry.startAll('secondary');
        await expectPattern(f.top, 0, IMG_SIZE, 0x11, 'top after start');
        // The NBD write of the primary.
        await f.localBB.write(32 * MiB, fill(32 * MiB, 0x22));
        await expectPattern(f.top, 0, IMG_SIZE, 0x11, 'hidden buffered the old data');
        await f.top.write(0, fill(32 * MiB, 0x33));
        await expectPattern(f.top, 0, 32 * MiB, 0x33, 'the SVM sees its write');
        await expectPattern(f.localBB, 0, 32 * MiB, 0x11, 'SVM writes never reach the local disk');
        await expectPattern(f.localBB, 32 * MiB, 32 * MiB, 0x22, 'the primary write landed');
        await f.registry.stopAll(true);
        await f.registry.settled();
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/secondary/stop', async () => {
      const f = await secondaryFixture(kind);
      try {
        await f.registry.startAll('secondary');
        await f.localBB.write(32 * MiB, fill(32 * MiB, 0x22));
        await expectPattern(f.top, 32 * MiB, 32 * MiB, 0x11, 'before failover');
        await f.top.write(0, fill(32 * MiB, 0x33));
        await f.registry.stopAll(true);
        // stop returns while the commit runs: the view is already the result.
        await expectPattern(f.top, 0, 32 * MiB, 0x33, 'during the commit');
        await expectPattern(f.top, 32 * MiB, 32 * MiB, 0x11, 'during the commit (QEMU really gives 0x11)');
        await f.registry.settled();
        assert.equal(f.repl.stage, 'done');
        assert.equal(f.repl.file, f.local, 'the secondary disk replaced the active disk');
        await expectPattern(f.top, 0, 32 * MiB, 0x33, 'after the commit');
        await expectPattern(f.top, 32 * MiB, 32 * MiB, 0x11, 'primary writes since the checkpoint roll back');
        await expectPattern(f.localBB, 0, 32 * MiB, 0x33, 'local disk');
        await expectPattern(f.localBB, 32 * MiB, 32 * MiB, 0x11, 'local disk');
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/secondary/continuous_replication', async () => {
      const f = await secondaryFixture(kind);
      try {
        await f.registry.startAll('secondary');
        await f.localBB.write(32 * MiB, fill(32 * MiB, 0x22));
        await expectPattern(f.top, 32 * MiB, 32 * MiB, 0x11);
        await f.top.write(0, fill(32 * MiB, 0x33));
        await f.registry.stopAll(true);
        // A promoted secondary ignores everything from now on.
        await f.registry.startAll('primary');
        await f.registry.checkpointAll();
        await f.registry.stopAll(true);
        await f.registry.settled();
        assert.equal(f.repl.stage, 'done');
        await expectPattern(f.top, 0, 32 * MiB, 0x33);
        await expectPattern(f.top, 32 * MiB, 32 * MiB, 0x11, 'QEMU really gives 0x11');
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/secondary/do_checkpoint', async () => {
      const f = await secondaryFixture(kind);
      try {
        await f.registry.startAll('secondary');
        await f.localBB.write(32 * MiB, fill(32 * MiB, 0x22));
        await expectPattern(f.top, 32 * MiB, 32 * MiB, 0x11, 'before the checkpoint');
        await f.registry.checkpointAll();
        await expectPattern(f.top, 32 * MiB, 32 * MiB, 0x22, 'after the checkpoint, from the local disk');
        await f.registry.stopAll(true);
        await f.registry.settled();
      } finally {
        await f.cleanup();
      }
    });

    test('/replication/secondary/get_error_all', async () => {
      const f = await secondaryFixture(kind);
      try {
        await f.registry.startAll('secondary');
        f.registry.getErrorAll();
        await f.registry.stopAll(true);
        await f.registry.settled();
      } finally {
        await f.cleanup();
      }
    });
  });
}
