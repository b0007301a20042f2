import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { CLK_TCK, cpuSecondsOf, foreignCpu, memoryOf, processTree, resetPeakMemory, type CpuSnapshot } from '../../bench/pair/procfs.js';

function snap(entries: Array<[pid: number, ppid: number, ticks: number, comm: string, start?: number]>): CpuSnapshot {
  return new Map(entries.map(([pid, ppid, ticks, comm, start = 1]) => [pid, { ppid, ticks, comm, start }]));
}

test('a process tree holds the root and every descendant, nothing else', () => {
  const s = snap([[1, 0, 0, 'init'], [10, 1, 0, 'harness'], [11, 10, 0, 'qemu'], [12, 11, 0, 'helper'], [13, 12, 0, 'grandchild'], [20, 1, 0, 'other']]);
  assert.deepEqual(processTree(s, 11).sort(), [11, 12, 13]);
  assert.deepEqual(processTree(s, 20), [20]);
  assert.deepEqual(processTree(s, 99), []);
});

test('foreign CPU counts other processes only, new ones in full, recycled pids afresh, renamed ones by their delta', () => {
  const before = snap([[10, 1, 100, 'harness'], [11, 10, 500, 'qemu'], [20, 1, 1000, 'node'], [30, 1, 50, 'old'], [50, 2, 9000, 'kworker/1:2-events']]);
  const after = snap([[10, 1, 150, 'harness'], [11, 10, 900, 'qemu'], [12, 10, 70, 'fio'], [20, 1, 1300, 'node'], [30, 1, 20, 'recycled', 7],
    [40, 1, 0, 'idle'], [50, 2, 9010, 'kworker/1:2-mm_percpu_wq']]);
  const r = foreignCpu(before, after, 10);
  // node: 300 ticks; pid 30 started anew: all its 20 ticks are new; the kworker only renamed itself: 10 ticks.
  assert.equal(r.seconds, 330 / CLK_TCK);
  assert.equal(r.top, `node:${(300 / CLK_TCK).toFixed(1)}s, recycled:${(20 / CLK_TCK).toFixed(1)}s, kworker/1:2-mm_percpu_wq:${(10 / CLK_TCK).toFixed(1)}s`);
  assert.ok(!r.top.includes('qemu') && !r.top.includes('fio') && !r.top.includes('idle'));
});

test('peak memory and CPU time of a live child are readable, and the peak resets to the current size', async () => {
  // The child holds 96 MiB, says "big", frees them when told (glibc unmaps a block that large at once), says "small".
  const script = [
    'import sys',
    'b = bytearray(b"\\x01") * (96 << 20)',
    'print("big", flush=True)',
    'sys.stdin.readline()',
    'del b',
    'print("small", flush=True)',
    'sys.stdin.readline()',
  ].join('\n');
  const child = spawn('/usr/bin/python3', ['-c', script], { stdio: ['pipe', 'pipe', 'ignore'] });
  const lines: string[] = [];
  const waitLine = (want: string): Promise<void> => new Promise((resolve) => {
    const check = (): void => { if (lines.includes(want)) resolve(); else child.stdout!.once('data', (d: Buffer) => { lines.push(...d.toString().split('\n')); check(); }); };
    check();
  });
  try {
    const pid = child.pid!;
    await waitLine('big');
    const big = memoryOf(pid)!;
    assert.ok(big.peak >= 96 << 20, `peak ${big.peak}`);
    assert.ok(big.current <= big.peak);
    assert.ok((cpuSecondsOf(pid) ?? -1) >= 0);
    child.stdin!.write('free\n');
    await waitLine('small');
    const small = memoryOf(pid)!;
    assert.ok(small.current < big.peak - (64 << 20), `current ${small.current} after freeing`);
    // The kernel's RSS counters are per-CPU approximations: the peak is kept to within a few pages.
    assert.ok(small.peak >= 96 << 20);
    assert.ok(resetPeakMemory(pid), 'clear_refs refused');
    assert.ok(memoryOf(pid)!.peak < big.peak - (64 << 20));
  } finally {
    child.kill('SIGKILL');
  }
  assert.equal(memoryOf(2 ** 22 + 12345), null);
});
