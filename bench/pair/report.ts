/**
 * The table: one row per measurement, one column per implementation
 * (colo-blk, QEMU stock, QEMU with the glibc malloc tuning), each cell the
 * median with the min–max of its runs, and the ratio of colo-blk's median
 * to the better of QEMU's two. Pure functions of the run records.
 */
import { bufferedBytes, systemFor, type Group, type SystemId, type Variant, type WorkloadId } from './config.js';
import { best, ratio, summarize, type Better, type Summary } from './stats.js';
import type { RunRecord } from './workloads.js';

export interface RowSpec {
  group: Group;
  label: string;
  unit: string;
  better: Better;
  workloads: readonly WorkloadId[];
  value(r: RunRecord): number | undefined;
}

export type CellStatus = 'ok' | 'no-data' | 'not-selected' | 'skipped' | 'failed';

export interface Cell {
  system: SystemId;
  status: CellStatus;
  summary: Summary | null;
}

export interface ReportRow {
  group: Group;
  label: string;
  unit: string;
  better: Better;
  cells: Record<Variant, Cell>;
  /** colo-blk / the better QEMU variant; null when either is missing. */
  ratio: number | null;
  /** Which QEMU variant the ratio is against. */
  reference: Variant | null;
}

export interface ReportInput {
  records: readonly RunRecord[];
  selected: readonly SystemId[];
  workloads: readonly WorkloadId[];
  skipped: Partial<Record<SystemId, string>>;
  failed: Partial<Record<SystemId, string>>;
  size: number;
}

export const GROUP_TITLES: Record<Group, string> = {
  pair: 'replicated pair (writes into the primary, replicated to the secondary)',
  alone: 'primary alone (quorum over the raw disk, no replication child)',
  nbd: 'plain NBD export of a raw image',
};

/** Column titles per group: the QEMU side of the nbd group is qemu-nbd. */
export function columnTitles(group: Group): Record<Variant, string> {
  const q = group === 'nbd' ? 'qemu-nbd' : 'QEMU';
  return { 'colo-blk': group === 'nbd' || group === 'alone' ? 'colo-blk daemon' : 'colo-blk', stock: q, tuned: `${q} malloc-tuned` };
}

const MiB = 1 << 20;
const ROLE_ROWS: Record<Group, readonly string[]> = { pair: ['primary', 'secondary'], alone: ['primary'], nbd: ['server'] };
const FIO_WORKLOADS = ['seq1m', 'rand4k-qd1', 'rand4k-qd16'] as const;

export function rowSpecs(size: number): RowSpec[] {
  const rows: RowSpec[] = [];
  const big = `${bufferedBytes(size) / MiB}+${bufferedBytes(size) / MiB} MiB`;
  for (const group of ['pair', 'alone', 'nbd'] as const) {
    const g = (label: string, unit: string, better: Better, workloads: readonly WorkloadId[], value: RowSpec['value']): void => {
      rows.push({ group, label, unit, better, workloads, value });
    };
    g('seq write 1M QD1', 'MiB/s', 'higher', ['seq1m'], (r) => r.metrics.mibps);
    g('rand write 4K QD1', 'IOPS', 'higher', ['rand4k-qd1'], (r) => r.metrics.iops);
    g('rand write 4K QD1 p50 latency', 'us', 'lower', ['rand4k-qd1'], (r) => r.metrics.clatP50Us);
    g('rand write 4K QD1 p99 latency', 'us', 'lower', ['rand4k-qd1'], (r) => r.metrics.clatP99Us);
    g('rand write 4K QD16', 'IOPS', 'higher', ['rand4k-qd16'], (r) => r.metrics.iops);
    g('rand write 4K QD16 p50 latency', 'us', 'lower', ['rand4k-qd16'], (r) => r.metrics.clatP50Us);
    g('rand write 4K QD16 p99 latency', 'us', 'lower', ['rand4k-qd16'], (r) => r.metrics.clatP99Us);
    g('server CPU per seq 1M run', 'CPU-s', 'lower', ['seq1m'], (r) => r.serverCpuS);
    g('server CPU per 1000 rand 4K QD1 writes', 'CPU-ms', 'lower', ['rand4k-qd1'], cpuPerThousand);
    g('server CPU per 1000 rand 4K QD16 writes', 'CPU-ms', 'lower', ['rand4k-qd16'], cpuPerThousand);
    for (const role of ROLE_ROWS[group]) {
      g(`peak RSS ${role === 'server' ? '' : `${role} `}during a fio run`.replace('  ', ' '), 'MiB', 'lower', FIO_WORKLOADS, (r) => {
        const v = r.peakRss?.[role];
        return v === undefined ? undefined : v / MiB;
      });
    }
    if (group !== 'pair') continue;
    g('checkpoint, nothing buffered (secondary QMP round trip)', 'ms', 'lower', ['ckpt-empty'], (r) => r.metrics.secondaryMs);
    g('checkpoint, 1+1 MiB buffered', 'ms', 'lower', ['ckpt-1m'], (r) => r.metrics.secondaryMs);
    g(`checkpoint, ${big} buffered`, 'ms', 'lower', ['ckpt-big'], (r) => r.metrics.secondaryMs);
    g(`failover, ${big} buffered: command round trip`, 'ms', 'lower', ['failover'], (r) => r.metrics.commandMs);
    g(`failover, ${big} buffered: first write on the new primary done`, 'ms', 'lower', ['failover'], (r) => r.metrics.firstWriteMs);
    g(`failover, ${big} buffered: commit done`, 'ms', 'lower', ['failover'], (r) => r.metrics.commitMs);
    g('peak RSS secondary during failover', 'MiB', 'lower', ['failover'], (r) => {
      const v = r.peakRss?.secondary;
      return v === undefined ? undefined : v / MiB;
    });
  }
  return rows;
}

function cpuPerThousand(r: RunRecord): number | undefined {
  if (r.serverCpuS === undefined || !r.metrics.ios) return undefined;
  return (r.serverCpuS * 1000 * 1000) / r.metrics.ios;
}

export function buildRows(input: ReportInput): ReportRow[] {
  const out: ReportRow[] = [];
  for (const spec of rowSpecs(input.size)) {
    if (!spec.workloads.some((w) => input.workloads.includes(w))) continue;
    const cells = {} as Record<Variant, Cell>;
    for (const variant of ['colo-blk', 'stock', 'tuned'] as const) {
      const system = systemFor(spec.group, variant);
      let status: CellStatus;
      let summary: Summary | null = null;
      if (!input.selected.includes(system)) status = 'not-selected';
      else if (input.skipped[system]) status = 'skipped';
      else if (input.failed[system]) status = 'failed';
      else {
        const values = input.records
          .filter((r) => r.system === system && spec.workloads.includes(r.workload))
          .map((r) => spec.value(r))
          .filter((v): v is number => v !== undefined);
        summary = summarize(values);
        status = summary ? 'ok' : 'no-data';
      }
      cells[variant] = { system, status, summary };
    }
    if (Object.values(cells).every((c) => c.status === 'not-selected' || c.status === 'no-data')) continue;
    const ref = best([cells.stock.summary, cells.tuned.summary], spec.better);
    const reference = ref === null ? null : ref === cells.stock.summary ? 'stock' : 'tuned';
    out.push({ group: spec.group, label: spec.label, unit: spec.unit, better: spec.better, cells, ratio: ratio(cells['colo-blk'].summary, ref), reference });
  }
  return out;
}

/** 3 significant digits or so: 12345, 1234, 123, 12.3, 1.23. */
export function formatNumber(v: number): string {
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

export function formatCell(c: Cell): string {
  switch (c.status) {
    case 'not-selected': return '-';
    case 'skipped': return 'skipped';
    case 'failed': return 'FAILED';
    case 'no-data': return 'no data';
    case 'ok': {
      const s = c.summary!;
      return s.n === 1 ? formatNumber(s.median) : `${formatNumber(s.median)} (${formatNumber(s.min)}-${formatNumber(s.max)})`;
    }
  }
}

export function formatRatio(row: ReportRow): string {
  if (row.ratio === null) return '-';
  return `${row.ratio.toFixed(2)}x${row.reference === 'tuned' ? ' (t)' : ''}`;
}

/** The table as fixed-width text, one block per group. */
export function formatTable(rows: readonly ReportRow[]): string {
  const lines: string[] = [];
  const groups = [...new Set(rows.map((r) => r.group))];
  for (const group of groups) {
    const titles = columnTitles(group);
    const header = ['', 'unit', titles['colo-blk'], titles.stock, titles.tuned, 'colo-blk / best QEMU'];
    const body = rows.filter((r) => r.group === group).map((r) => [
      `${r.better === 'higher' ? '^' : 'v'} ${r.label}`, r.unit, formatCell(r.cells['colo-blk']), formatCell(r.cells.stock), formatCell(r.cells.tuned), formatRatio(r),
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
    const fmt = (cols: string[]): string => cols.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
    lines.push(`== ${GROUP_TITLES[group]}`);
    lines.push(fmt(header));
    lines.push(widths.map((w) => '-'.repeat(w)).join('  '));
    for (const b of body) lines.push(fmt(b));
    lines.push('');
  }
  lines.push('Cells: median (min-max) over all runs. ^ higher is better, v lower is better.');
  lines.push('Ratio: colo-blk median / the better median of QEMU stock and QEMU malloc-tuned; "(t)" when the tuned one was better.');
  lines.push('For ^ rows a ratio above 1 favours colo-blk; for v rows a ratio below 1 does.');
  return lines.join('\n');
}
