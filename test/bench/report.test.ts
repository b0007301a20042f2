import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WORKLOAD_IDS, type SystemId, type WorkloadId } from '../../bench/pair/config.js';
import { buildRows, formatCell, formatNumber, formatTable, type ReportInput } from '../../bench/pair/report.js';
import type { MetricId, RunRecord } from '../../bench/pair/workloads.js';

const MiB = 1 << 20;

function rec(system: SystemId, workload: WorkloadId, metrics: Partial<Record<MetricId, number>>, extra: Partial<RunRecord> = {}): RunRecord {
  return { system, workload, round: 1, rep: 0, metrics, checks: [], ...extra };
}

function input(records: RunRecord[], over: Partial<ReportInput> = {}): ReportInput {
  return {
    records,
    selected: ['colo-pair', 'qemu-pair', 'qemu-pair-tuned'],
    workloads: [...WORKLOAD_IDS],
    skipped: {},
    failed: {},
    size: 256 * MiB,
    ...over,
  };
}

test('throughput ratio is against the better QEMU variant (higher wins)', () => {
  const rows = buildRows(input([
    rec('colo-pair', 'seq1m', { mibps: 300 }), rec('colo-pair', 'seq1m', { mibps: 500 }), rec('colo-pair', 'seq1m', { mibps: 400 }),
    rec('qemu-pair', 'seq1m', { mibps: 125 }),
    rec('qemu-pair-tuned', 'seq1m', { mibps: 700 }),
  ]));
  const row = rows.find((r) => r.label === 'seq write 1M QD1' && r.group === 'pair')!;
  assert.deepEqual(row.cells['colo-blk'].summary, { median: 400, min: 300, max: 500, n: 3 });
  assert.equal(row.reference, 'tuned');
  assert.equal(row.ratio, 400 / 700);
});

test('latency, time and memory ratios are against the lower QEMU median', () => {
  const rows = buildRows(input([
    rec('colo-pair', 'ckpt-big', { secondaryMs: 3 }),
    rec('qemu-pair', 'ckpt-big', { secondaryMs: 9 }),
    rec('qemu-pair-tuned', 'ckpt-big', { secondaryMs: 12 }),
  ]));
  const row = rows.find((r) => r.label === 'checkpoint, 64+64 MiB buffered')!;
  assert.equal(row.better, 'lower');
  assert.equal(row.reference, 'stock');
  assert.equal(row.ratio, 3 / 9);
});

test('skipped, failed and unselected systems show as such and give no ratio', () => {
  const rows = buildRows(input([rec('qemu-pair', 'seq1m', { mibps: 125 })], {
    skipped: { 'colo-pair': 'not built' }, selected: ['colo-pair', 'qemu-pair'],
  }));
  const row = rows.find((r) => r.label === 'seq write 1M QD1')!;
  assert.equal(row.cells['colo-blk'].status, 'skipped');
  assert.equal(row.cells.tuned.status, 'not-selected');
  assert.equal(row.ratio, null);
  const failed = buildRows(input([rec('colo-pair', 'seq1m', { mibps: 900 }), rec('qemu-pair', 'seq1m', { mibps: 125 })], {
    failed: { 'colo-pair': 'data mismatch' },
  })).find((r) => r.label === 'seq write 1M QD1')!;
  // A system that failed a data check has no numbers, even from runs before the failure.
  assert.equal(failed.cells['colo-blk'].status, 'failed');
  assert.equal(failed.cells['colo-blk'].summary, null);
  assert.equal(failed.ratio, null);
});

test('rows of workloads that were not run are left out; groups with no system are left out', () => {
  const rows = buildRows(input([rec('qemu-pair', 'seq1m', { mibps: 1 })], { workloads: ['seq1m'] }));
  assert.ok(rows.every((r) => r.group === 'pair'));
  assert.ok(!rows.some((r) => r.label.startsWith('checkpoint') || r.label.startsWith('rand')));
});

test('CPU per 1000 writes, peak RSS per role in MiB', () => {
  const rows = buildRows(input([
    rec('qemu-pair', 'rand4k-qd1', { iops: 5000, ios: 100_000 }, { serverCpuS: 20, peakRss: { primary: 40 * MiB, secondary: 30 * MiB } }),
    rec('qemu-pair', 'seq1m', { mibps: 125 }, { serverCpuS: 2, peakRss: { primary: 60 * MiB, secondary: 50 * MiB } }),
  ]));
  assert.equal(rows.find((r) => r.label === 'server CPU per 1000 rand 4K QD1 writes')!.cells.stock.summary!.median, 200);
  const rss = rows.find((r) => r.label === 'peak RSS primary during a fio run')!;
  assert.deepEqual(rss.cells.stock.summary, { median: 50, min: 40, max: 60, n: 2 });
  assert.equal(rows.find((r) => r.label === 'peak RSS secondary during a fio run')!.cells.stock.summary!.max, 50);
});

test('numbers keep about three significant digits', () => {
  assert.equal(formatNumber(12345.6), '12346');
  assert.equal(formatNumber(123.4), '123');
  assert.equal(formatNumber(12.34), '12.3');
  assert.equal(formatNumber(1.234), '1.23');
  assert.equal(formatCell({ system: 'qemu-pair', status: 'ok', summary: { median: 5, min: 4, max: 6, n: 3 } }), '5.00 (4.00-6.00)');
  assert.equal(formatCell({ system: 'qemu-pair', status: 'ok', summary: { median: 5, min: 5, max: 5, n: 1 } }), '5.00');
  assert.equal(formatCell({ system: 'qemu-pair', status: 'failed', summary: null }), 'FAILED');
});

test('the table has one aligned block per group with the directions and the ratio', () => {
  const text = formatTable(buildRows(input([
    rec('colo-pair', 'rand4k-qd1', { iops: 12000, clatP50Us: 60 }),
    rec('qemu-pair', 'rand4k-qd1', { iops: 6000, clatP50Us: 120 }),
    rec('qemu-pair-tuned', 'rand4k-qd1', { iops: 6500, clatP50Us: 110 }),
    rec('qemu-nbd', 'rand4k-qd1', { iops: 13000, clatP50Us: 50 }),
  ], { selected: ['colo-pair', 'qemu-pair', 'qemu-pair-tuned', 'qemu-nbd'], workloads: ['rand4k-qd1'] })));
  const lines = text.split('\n');
  assert.ok(lines.some((l) => l.startsWith('== replicated pair')));
  assert.ok(lines.some((l) => l.startsWith('== plain NBD export')));
  const iops = lines.find((l) => l.startsWith('^ rand write 4K QD1 '))!;
  assert.match(iops, /IOPS\s+12000\s+6000\s+6500\s+1\.85x \(t\)$/);
  const p50 = lines.find((l) => l.startsWith('v rand write 4K QD1 p50'))!;
  assert.match(p50, /0\.55x \(t\)$/);
  // Columns line up: header, rule and rows of a block are equally wide (the last column is right-aligned).
  const block = lines.slice(lines.findIndex((l) => l.startsWith('== replicated')) + 1, lines.findIndex((l) => l === ''));
  assert.ok(block.length >= 4);
  assert.deepEqual(new Set(block.map((l) => l.length)).size, 1);
  assert.match(text, /qemu-nbd malloc-tuned/);
});
