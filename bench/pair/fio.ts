/**
 * fio with its nbd ioengine, exactly as the QEMU COLO anchor ran it
 * (REPORT.md §6), and the parsing of its JSON output.
 */
import { readFile } from 'node:fs/promises';
import type { ProcessManager } from './processes.js';

export interface FioWorkload {
  /** Short tag used in file names. */
  tag: string;
  rw: 'write' | 'randwrite';
  bs: string;
  iodepth: number;
  /** Bytes addressed (the image size). */
  size: number;
  /** Seconds for a time-based run; absent: write `size` bytes once. */
  runtime?: number;
}

export interface FioResult {
  iops: number;
  mibps: number;
  ioBytes: number;
  totalIos: number;
  runtimeMs: number;
  latMeanUs: number;
  clatP50Us: number;
  clatP99Us: number;
  /** fio's own CPU use, percent of one CPU (the client side). */
  clientUsrCpu: number;
  clientSysCpu: number;
}

const MiB = 1 << 20;

export function fioArgs(w: FioWorkload, uri: string, output: string, name = w.tag): string[] {
  const args = [
    `--name=${name}`, '--ioengine=nbd', `--uri=${uri}`, `--rw=${w.rw}`, `--bs=${w.bs}`, `--iodepth=${w.iodepth}`,
    `--size=${w.size}`, '--numjobs=1', '--output-format=json', `--output=${output}`,
  ];
  if (w.runtime !== undefined) args.push('--time_based', `--runtime=${w.runtime}`, '--norandommap', '--randrepeat=0');
  return args;
}

interface FioLat {
  mean?: number;
  percentile?: Record<string, number>;
}

interface FioSide {
  iops?: number;
  bw_bytes?: number;
  io_bytes?: number;
  total_ios?: number;
  runtime?: number;
  lat_ns?: FioLat;
  clat_ns?: FioLat;
}

interface FioJobJson {
  jobname?: string;
  error?: number;
  write?: FioSide;
  usr_cpu?: number;
  sys_cpu?: number;
}

/**
 * The write side of the first job of fio's JSON output. fio may print
 * notes before the JSON document (even into the --output file), so the
 * document is taken from the first `{` to the last `}`.
 */
export function parseFioJson(text: string): FioResult {
  const start = text.indexOf('{');
  const end = text.lastIndexOf('}');
  if (start < 0 || end < start) throw new Error('fio output holds no JSON document');
  let doc: unknown;
  try {
    doc = JSON.parse(text.slice(start, end + 1));
  } catch (err) {
    throw new Error(`fio output is not valid JSON: ${(err as Error).message}`);
  }
  const jobs = (doc as { jobs?: unknown }).jobs;
  if (!Array.isArray(jobs) || jobs.length === 0) throw new Error('fio output has no jobs');
  const job = jobs[0] as FioJobJson;
  if (job.error) throw new Error(`fio job ${job.jobname ?? '?'} failed with error ${job.error}`);
  const w = job.write;
  if (!w || typeof w.iops !== 'number' || typeof w.bw_bytes !== 'number') throw new Error('fio output has no write statistics');
  if (!w.total_ios) throw new Error('fio completed no writes');
  const pct = (p: string): number => (w.clat_ns?.percentile?.[p] ?? Number.NaN) / 1e3;
  return {
    iops: w.iops,
    mibps: w.bw_bytes / MiB,
    ioBytes: w.io_bytes ?? 0,
    totalIos: w.total_ios,
    runtimeMs: w.runtime ?? 0,
    latMeanUs: (w.lat_ns?.mean ?? Number.NaN) / 1e3,
    clatP50Us: pct('50.000000'),
    clatP99Us: pct('99.000000'),
    clientUsrCpu: job.usr_cpu ?? Number.NaN,
    clientSysCpu: job.sys_cpu ?? Number.NaN,
  };
}

/** Runs fio to completion (killed with the harness) and parses its output file. */
export async function runFio(pm: ProcessManager, w: FioWorkload, uri: string, output: string, name: string): Promise<FioResult> {
  const args = fioArgs(w, uri, output, name);
  const proc = pm.spawn(`fio-${name}`, 'fio', args);
  const limitMs = ((w.runtime ?? 0) + 180) * 1000;
  const exit = await proc.waitExit(limitMs);
  if (exit.code !== 0) {
    throw new Error(`fio exited with ${exit.code ?? exit.signal}: ${proc.tail()}`);
  }
  return parseFioJson(await readFile(output, 'utf8'));
}
