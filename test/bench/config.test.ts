import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SYSTEM_IDS, WORKLOAD_IDS, appliesTo, bufferedBytes, parseConfig } from '../../bench/pair/config.js';
import { rotate } from '../../bench/pair/runner.js';

const MiB = 1 << 20;

test('defaults are the full run of the brief', () => {
  const c = parseConfig([]);
  assert.equal(c.rounds, 3);
  assert.equal(c.runtime, 20);
  assert.equal(c.size, 256 * MiB);
  assert.deepEqual(c.systems, [...SYSTEM_IDS]);
  assert.deepEqual(c.workloads, [...WORKLOAD_IDS]);
  assert.equal(c.workDir, '/dev/shm');
  assert.equal(c.quick, false);
});

test('--quick is one round of 3 s on 64 MiB, and explicit knobs still win', () => {
  const q = parseConfig(['--quick']);
  assert.deepEqual([q.rounds, q.runtime, q.size, q.checkpointReps], [1, 3, 64 * MiB, 1]);
  const q2 = parseConfig(['--quick', '--rounds', '2', '--size=128M']);
  assert.deepEqual([q2.rounds, q2.runtime, q2.size], [2, 3, 128 * MiB]);
});

test('flags win over environment variables, which win over defaults', () => {
  const env = { BENCH_ROUNDS: '5', BENCH_RUNTIME: '7', BENCH_SYSTEMS: 'qemu', BENCH_QUICK: '1' };
  const c = parseConfig(['--rounds', '4'], env);
  assert.equal(c.rounds, 4);
  assert.equal(c.runtime, 7);
  assert.equal(c.size, 64 * MiB);
  assert.ok(c.systems.every((s) => s.startsWith('qemu')));
  assert.equal(parseConfig([], { BENCH_ROUNDS: '' }).rounds, 3);
});

test('aliases expand, duplicates collapse, and the canonical order is kept', () => {
  assert.deepEqual(parseConfig(['--systems', 'qemu-nbd,pair,qemu-pair']).systems, ['colo-pair', 'qemu-pair', 'qemu-pair-tuned', 'qemu-nbd']);
  assert.deepEqual(parseConfig(['--workloads', 'failover,fio']).workloads, ['seq1m', 'rand4k-qd1', 'rand4k-qd16', 'failover']);
  assert.deepEqual(parseConfig(['--workloads', 'ckpt']).workloads, ['ckpt-empty', 'ckpt-1m', 'ckpt-big']);
});

test('bad input is refused with a message naming it', () => {
  assert.throws(() => parseConfig(['--systems', 'qemu-pear']), /unknown system 'qemu-pear'/);
  assert.throws(() => parseConfig(['--workloads', ',']), /no workload selected/);
  assert.throws(() => parseConfig(['--rounds', '0']), /--rounds must be a positive integer/);
  assert.throws(() => parseConfig(['--runtime', '2.5']), /--runtime must be a positive integer/);
  assert.throws(() => parseConfig(['--size', '1000']), /--size must be a whole number of MiB/);
  assert.throws(() => parseConfig(['--size', '8M']), /at least 16M/);
  assert.throws(() => parseConfig(['--rounds']), /--rounds needs a value/);
  assert.throws(() => parseConfig(['--fast']), /unknown option '--fast'/);
});

test('checkpoint and failover only apply to replicated pairs', () => {
  assert.ok(appliesTo('failover', 'colo-pair'));
  assert.ok(appliesTo('ckpt-big', 'qemu-pair-tuned'));
  assert.ok(!appliesTo('ckpt-empty', 'qemu-alone'));
  assert.ok(!appliesTo('failover', 'qemu-nbd'));
  assert.ok(appliesTo('seq1m', 'qemu-nbd'));
});

test('the buffered amount is 64 MiB, less on images too small for three such regions', () => {
  assert.equal(bufferedBytes(256 * MiB), 64 * MiB);
  assert.equal(bufferedBytes(1024 * MiB), 64 * MiB);
  assert.equal(bufferedBytes(64 * MiB), 16 * MiB);
  assert.equal(bufferedBytes(70 * MiB), 17 * MiB);
});

test('round-robin rotation moves the first system each round and keeps every system once', () => {
  const order = ['a', 'b', 'c'];
  assert.deepEqual(rotate(order, 0), ['a', 'b', 'c']);
  assert.deepEqual(rotate(order, 1), ['b', 'c', 'a']);
  assert.deepEqual(rotate(order, 5), ['c', 'a', 'b']);
  assert.deepEqual(rotate([], 2), []);
});
