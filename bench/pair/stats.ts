/**
 * Summaries of repeated measurements. The machine is noisy (2 CPUs shared
 * with other engineers' test suites), so the harness reports the median
 * with the full range rather than a mean.
 */

export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

/** Median, min, max of the finite values; null when there are none. */
export function summarize(values: readonly number[]): Summary | null {
  const finite = values.filter((x) => Number.isFinite(x));
  if (finite.length === 0) return null;
  return { median: median(finite), min: Math.min(...finite), max: Math.max(...finite), n: finite.length };
}

/** Whether a bigger number is the better one (throughput) or the smaller (latency, time, memory, CPU). */
export type Better = 'higher' | 'lower';

/** The better of several medians (QEMU stock vs malloc-tuned); null when none was measured. */
export function best(candidates: ReadonlyArray<Summary | null>, better: Better): Summary | null {
  let chosen: Summary | null = null;
  for (const c of candidates) {
    if (!c) continue;
    if (!chosen || (better === 'higher' ? c.median > chosen.median : c.median < chosen.median)) chosen = c;
  }
  return chosen;
}

/** colo-blk's median over the reference's; null when either is missing or the reference is 0. */
export function ratio(subject: Summary | null, reference: Summary | null): number | null {
  if (!subject || !reference || reference.median === 0) return null;
  return subject.median / reference.median;
}
