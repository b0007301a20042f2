/**
 * Concurrency of the secondary: no reader of the view ever sees a cluster
 * between "primary data landed" and "old data saved"; a checkpoint is atomic
 * with respect to primary writes and view I/O; a failover under load loses
 * nothing. Delays come from the fault driver so the windows are real.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  DISK_KINDS, KiB, MiB, assertAll, fill, localFault, secondaryFixture, until,
} from './fixtures.js';

const CLUSTER = 64 * KiB;

/** A deterministic PRNG (mulberry32) so failures reproduce. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('reads of the secondary view race primary writes', () => {
  test('a primary write waits for a reader that is between "not in hidden" and "read the secondary disk"', async () => {
    const f = await secondaryFixture('memory', { size: 4 * MiB, faultyLocal: true, locklessHidden: true });
    try {
      await f.repl.start('secondary');
      const cbw = f.repl.secondarySide!.backup!.cbw!;
      // The reader has passed active and hidden and is parked reading the secondary disk.
      const hold = localFault(f).addRule({ op: 'read', offset: MiB, length: CLUSTER, hold: true, count: 1 });
      const got = Buffer.alloc(CLUSTER, 0xa5);
      const reader = f.top.read(MiB, got);
      await hold.waitForHits(1);
      let written = false;
      const writer = f.localBB.write(MiB, fill(CLUSTER, 0x22)).then(() => { written = true; });
      await until(() => written || cbw.copyLock.waiting > 0, 'the write to finish or to queue for the copy lock');
      assert.equal(written, false, 'the write must not land while a reader may still read the old cluster');
      hold.release();
      await reader;
      assertAll(got, 0x11, 'the reader');
      await writer;
      const after = Buffer.alloc(CLUSTER, 0xa5);
      await f.top.read(MiB, after);
      assertAll(after, 0x11, 'the view after the write');
    } finally {
      await f.cleanup();
    }
  });

  for (const kind of DISK_KINDS) test(`many reads and primary writes on the same clusters, with random delays: never a new byte (${kind})`, async () => {
    const SIZE = 2 * MiB;
    // On memory the hidden disk is the lock-free stand-in, so this proves the
    // replication node's own lock (it fails without it); on qcow2 it is a real
    // image, whose own locking happens to close the window too: a regression check.
    const f = await secondaryFixture(kind, { size: SIZE, faultyLocal: true, locklessHidden: kind === 'memory' });
    try {
      await f.repl.start('secondary');
      const fault = localFault(f);
      fault.addRule({ op: 'read', delayMs: [0, 2] });
      fault.addRule({ op: 'write', delayMs: [0, 1] });
      const random = rng(42);
      // The view equals the secondary disk as of the last checkpoint.
      const view = Buffer.alloc(SIZE, 0x11);
      const primary = Buffer.alloc(SIZE, 0x11);
      let checked = 0;
      for (let round = 0; round < 6; round++) {
        const value = 0x30 + round;
        const ops: Array<Promise<void>> = [];
        for (let i = 0; i < 40; i++) {
          const cluster = Math.floor(random() * (SIZE / CLUSTER));
          if (random() < 0.4) {
            const off = cluster * CLUSTER + Math.floor(random() * 8) * 4 * KiB;
            primary.fill(value, off, off + 4 * KiB);
            ops.push(f.localBB.write(off, fill(4 * KiB, value)));
          } else {
            const off = cluster * CLUSTER + Math.floor(random() * 16) * 512;
            const len = Math.min(SIZE - off, 512 + Math.floor(random() * 3) * CLUSTER);
            const expected = Buffer.from(view.subarray(off, off + len));
            const buf = Buffer.alloc(len, 0xa5);
            ops.push(f.top.read(off, buf).then(() => {
              checked++;
              if (!buf.equals(expected)) {
                const i = buf.findIndex((b, k) => b !== expected[k]);
                assert.fail(`round ${round}: view byte ${off + i} is 0x${buf[i]!.toString(16)}, expected 0x${expected[i]!.toString(16)}`);
              }
            }));
          }
        }
        await Promise.all(ops);
        await f.repl.checkpoint();
        primary.copy(view);
        const disk = Buffer.alloc(SIZE);
        await f.localBB.read(0, disk);
        assert.ok(disk.equals(primary), 'the secondary disk holds every primary write');
      }
      assert.ok(checked > 100);
    } finally {
      await f.cleanup();
    }
  });
});

interface Window { start: number; end: number }

describe('checkpoints under concurrent I/O', () => {
  test('each read sees one checkpoint snapshot of the primary and only undiscarded SVM writes', async () => {
    const SIZE = 2 * MiB;
    const CLUSTERS = SIZE / CLUSTER;
    const P = CLUSTERS / 2; // clusters [0, P) are written by the primary, [P, CLUSTERS) by the SVM
    const f = await secondaryFixture('memory', { size: SIZE, faultyLocal: true, locklessHidden: true });
    try {
      await f.repl.start('secondary');
      localFault(f).addRule({ op: ['read', 'write'], delayMs: [0, 1] });
      let clock = 0;
      const tick = (): number => ++clock;
      const checkpoints: Window[] = [{ start: 0, end: 0 }]; // the one start ran
      const primaryWrites = new Map<number, Window[]>(); // version v at index v-1
      const svmWrites = new Map<number, Window[]>();
      const reads: Array<{ cluster: number; value: number } & Window> = [];
      const random = rng(7);
      let stop = false;

      const writer = async (cluster: number, log: Map<number, Window[]>, dev: typeof f.top, base: number): Promise<void> => {
        const list: Window[] = [];
        log.set(cluster, list);
        for (let v = 1; !stop && v < 60; v++) {
          await new Promise<void>((r) => setImmediate(r));
          const w = { start: tick(), end: 0 };
          list.push(w);
          await dev.write(cluster * CLUSTER, fill(CLUSTER, base + v));
          w.end = tick();
        }
      };
      const reader = async (): Promise<void> => {
        while (!stop) {
          // Like a client on a socket: one request per event-loop turn. A read
          // served from memory completes in microtasks alone and would starve timers.
          await new Promise<void>((r) => setImmediate(r));
          const cluster = Math.floor(random() * CLUSTERS);
          const buf = Buffer.alloc(CLUSTER, 0xa5);
          const start = tick();
          await f.top.read(cluster * CLUSTER, buf);
          const end = tick();
          assertAll(buf, buf[0]!, `cluster ${cluster} is torn`);
          reads.push({ cluster, value: buf[0]!, start, end });
        }
      };
      const checkpointer = async (): Promise<void> => {
        for (let i = 0; i < 20 && !stop; i++) {
          const w = { start: tick(), end: 0 };
          await f.repl.checkpoint();
          w.end = tick();
          checkpoints.push(w);
          await new Promise<void>((r) => setImmediate(r));
        }
        stop = true;
      };
      const tasks: Array<Promise<void>> = [checkpointer()];
      for (let c = 0; c < CLUSTERS; c++) {
        tasks.push(c < P ? writer(c, primaryWrites, f.localBB, 0x20) : writer(c, svmWrites, f.top, 0x80));
      }
      for (let r = 0; r < 4; r++) tasks.push(reader());
      try {
        await Promise.all(tasks);
      } finally {
        // A failed task must not leave the others looping.
        stop = true;
        await Promise.allSettled(tasks);
      }

      const versionOf = (value: number, base: number): number => (value === 0x11 ? 0 : value - base);
      for (const r of reads) {
        if (r.cluster < P) {
          // Primary clusters: the value lies between the snapshot of the last
          // checkpoint finished before the read and that of the last one begun before it ended.
          const writes = primaryWrites.get(r.cluster)!;
          const before = checkpoints.filter((k) => k.end < r.start).at(-1)!;
          const latest = checkpoints.filter((k) => k.start < r.end).at(-1)!;
          let lo = 0;
          let hi = 0;
          writes.forEach((w, i) => {
            if (w.end !== 0 && w.end < before.start) lo = i + 1;
            if (w.start < latest.end || latest.end === 0) hi = i + 1;
          });
          const v = versionOf(r.value, 0x20);
          assert.ok(v <= hi, `cluster ${r.cluster}: read version ${v} newer than any snapshot (max ${hi})`);
          assert.ok(v >= lo, `cluster ${r.cluster}: read version ${v} older than the last snapshot (min ${lo})`);
        } else {
          const writes = svmWrites.get(r.cluster)!;
          const discardedSurely = (w: Window): boolean => checkpoints.some((k) => w.start < k.start && k.end < r.start);
          const v = versionOf(r.value, 0x80);
          if (v > 0) {
            const w = writes[v - 1]!;
            assert.ok(w.start < r.end, `cluster ${r.cluster}: saw a write that started after the read`);
            assert.ok(!discardedSurely(w), `cluster ${r.cluster}: saw SVM version ${v} that a checkpoint had discarded`);
          }
        }
      }
      assert.ok(reads.length > 50, `enough reads (${reads.length})`);
    } finally {
      await f.cleanup();
    }
  });
});

describe('failover under concurrent I/O', () => {
  test('SVM writes before, during and after stop(failover) all reach the secondary disk', async () => {
    const SIZE = 4 * MiB;
    const f = await secondaryFixture('memory', { size: SIZE, faultyLocal: true, locklessHidden: true });
    try {
      await f.repl.start('secondary');
      localFault(f).addRule({ op: ['read', 'write'], delayMs: [0, 1] });
      // Primary writes since the checkpoint: rolled back by the failover.
      await f.localBB.write(0, fill(SIZE / 2, 0x22));
      const model = Buffer.alloc(SIZE, 0x11);
      const random = rng(3);
      const regions = 8;
      const regionSize = SIZE / regions;
      let failing = false;
      const writers = Array.from({ length: regions }, async (_, r) => {
        for (let i = 0; i < 25; i++) {
          const off = r * regionSize + Math.floor(random() * (regionSize / 4096 - 4)) * 4096;
          const len = 4096 * (1 + Math.floor(random() * 4));
          const value = 0x40 + ((r * 25 + i) % 0xa0);
          model.fill(value, off, off + len);
          await f.top.write(off, fill(len, value));
          if (i === 8 && r === 0) {
            failing = true;
            await f.repl.stop(true);
          }
        }
      });
      await Promise.all(writers);
      assert.ok(failing);
      await f.repl.failoverSettled();
      assert.equal(f.repl.stage, 'done');
      const disk = Buffer.alloc(SIZE, 0xa5);
      await f.localBB.read(0, disk);
      const i = disk.findIndex((b, k) => b !== model[k]);
      assert.equal(i, -1, `byte ${i} is 0x${disk[i]?.toString(16)}, expected 0x${model[i]?.toString(16)}`);
    } finally {
      await f.cleanup();
    }
  });
});
