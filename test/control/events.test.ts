import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventHub, type EventTimers, type QmpEvent } from '../../src/control/events.js';
import { Logger, setLogSink } from '../../src/util/log.js';

/** A clock the test advances by hand. */
class ManualTimers implements EventTimers {
  now = 0;
  private queue: Array<{ at: number; fn: () => void; id: number }> = [];
  private nextId = 1;

  set(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.queue.push({ at: this.now + ms, fn, id });
    return id;
  }

  clear(handle: unknown): void {
    this.queue = this.queue.filter((t) => t.id !== handle);
  }

  advance(ms: number): void {
    const end = this.now + ms;
    for (;;) {
      this.queue.sort((a, b) => a.at - b.at);
      const next = this.queue[0];
      if (!next || next.at > end) break;
      this.queue.shift();
      this.now = next.at;
      next.fn();
    }
    this.now = end;
  }

  get pending(): number {
    return this.queue.length;
  }
}

function hub() {
  const timers = new ManualTimers();
  const h = new EventHub({ timers });
  const seen: QmpEvent[] = [];
  h.subscribe((e) => seen.push(e));
  return { timers, h, seen };
}

test('ordinary events are delivered at once, with a timestamp, to every subscriber', () => {
  const { h, seen } = hub();
  const other: string[] = [];
  const off = h.subscribe((e) => other.push(e.event));
  h.emit('COLO_BLK_REPLICATION_STAGE', { 'node-name': 'r', mode: 'primary', stage: 'running', previous: 'none' });
  h.emit('COLO_BLK_REPLICATION_STAGE', { 'node-name': 'r', mode: 'primary', stage: 'done', previous: 'running' });
  off();
  h.emitUnchecked('NO_DATA');
  assert.deepEqual(seen.map((e) => e.event), ['COLO_BLK_REPLICATION_STAGE', 'COLO_BLK_REPLICATION_STAGE', 'NO_DATA']);
  assert.deepEqual(other, ['COLO_BLK_REPLICATION_STAGE', 'COLO_BLK_REPLICATION_STAGE']);
  assert.equal('data' in seen[2]!, false, 'an event without data has no data member, as in QEMU');
  const ts = seen[0]!.timestamp;
  assert.ok(Number.isInteger(ts.seconds) && Number.isInteger(ts.microseconds) && ts.microseconds < 1e6);
});

test('QUORUM_REPORT_BAD is throttled per node like QEMU: first at once, the last of a burst a second later', () => {
  const { timers, h, seen } = hub();
  const bad = (node: string, sector: number) => h.emit('QUORUM_REPORT_BAD', { type: 'write', 'node-name': node, 'sector-num': sector, 'sectors-count': 8, error: 'Input/output error' });
  bad('nbd0', 0);
  bad('nbd0', 8);
  bad('nbd0', 16);
  bad('nbd1', 0);
  assert.deepEqual(seen.map((e) => [(e.data as Record<string, unknown>)['node-name'], (e.data as Record<string, unknown>)['sector-num']]), [['nbd0', 0], ['nbd1', 0]]);
  timers.advance(999);
  assert.equal(seen.length, 2);
  timers.advance(1);
  assert.deepEqual((seen[2]!.data as Record<string, unknown>)['sector-num'], 16, 'the last of the burst, the middle one dropped');
  timers.advance(1000);
  assert.equal(seen.length, 3, 'a quiet second ends the throttle window');
  assert.equal(timers.pending, 0);
  bad('nbd0', 24);
  assert.equal(seen.length, 4, 'after a quiet window the next event goes out at once');
  h.close();
  assert.equal(timers.pending, 0);
});

test('job progress is throttled per job id', () => {
  const { timers, h, seen } = hub();
  for (let i = 1; i <= 10; i++) {
    h.emit('COLO_BLK_JOB_PROGRESS', { id: 'commit0', type: 'commit', 'current-progress': i, 'total-progress': 10 });
    h.emit('COLO_BLK_JOB_PROGRESS', { id: 'mirror0', type: 'mirror', 'current-progress': i * 2, 'total-progress': 20 });
  }
  timers.advance(1000);
  const progress = seen.map((e) => `${(e.data as { id: string }).id}:${(e.data as { 'current-progress': number })['current-progress']}`);
  assert.deepEqual(progress, ['commit0:1', 'mirror0:2', 'commit0:10', 'mirror0:20']);
});

test('a failing subscriber does not stop delivery to the others, and is logged', () => {
  const logged: string[] = [];
  const timers = new ManualTimers();
  const h = new EventHub({ timers, log: new Logger().child({ component: 'test' }) });
  const seen: QmpEvent[] = [];
  h.subscribe((e) => seen.push(e));
  setLogSink({ write: (l) => logged.push(l) });
  h.subscribe(() => { throw new Error('listener bug'); });
  const later: string[] = [];
  h.subscribe((e) => later.push(e.event));
  try {
    h.emitUnchecked('X');
  } finally {
    setLogSink({ write: (l) => process.stderr.write(l) });
  }
  assert.equal(seen.length, 1);
  assert.deepEqual(later, ['X']);
  assert.ok(logged.some((l) => l.includes('"event":"qmp.event_listener_failed"') && l.includes('"qmpEvent":"X"')));
});
