/**
 * What /proc says about the servers: peak resident memory (VmHWM, reset
 * before each run through clear_refs) and CPU time, and how much CPU other
 * processes on this shared machine used during a run (a noise indicator).
 */
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

/** Clock ticks per second of /proc/PID/stat times. */
export const CLK_TCK = ((): number => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const n = Number(r.stdout?.trim());
  return Number.isFinite(n) && n > 0 ? n : 100;
})();

/** Peak and current resident set size in bytes (null once the process is gone). */
export function memoryOf(pid: number): { peak: number; current: number } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const kb = (key: string): number => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) * 1024 : Number.NaN;
  };
  return { peak: kb('VmHWM'), current: kb('VmRSS') };
}

/**
 * Resets the process's peak RSS to its current RSS (Linux ≥ 4.0,
 * `echo 5 > /proc/PID/clear_refs`), so VmHWM after a run is that run's peak.
 * Returns false when the kernel refuses; VmHWM is then the lifetime peak.
 */
export function resetPeakMemory(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

interface ProcStat {
  ppid: number;
  ticks: number;
  comm: string;
  /** Start time in clock ticks since boot: tells a recycled pid from a renamed thread (kworkers rename themselves). */
  start: number;
}

function readStat(pid: number | string): ProcStat | null {
  let st: string;
  try {
    st = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // comm may hold spaces and parentheses: fields resume after the last ')'.
  const close = st.lastIndexOf(')');
  const rest = st.slice(close + 2).split(' ');
  return {
    ppid: Number(rest[1]),
    ticks: Number(rest[11]) + Number(rest[12]),
    comm: st.slice(st.indexOf('(') + 1, close),
    start: Number(rest[19]),
  };
}

/** User + system CPU seconds a process has used so far (all its threads). */
export function cpuSecondsOf(pid: number): number | null {
  const s = readStat(pid);
  return s ? s.ticks / CLK_TCK : null;
}

export type CpuSnapshot = Map<number, ProcStat>;

export function snapshotCpu(): CpuSnapshot {
  const snap: CpuSnapshot = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const s = readStat(d);
    if (s) snap.set(Number(d), s);
  }
  return snap;
}

/** `root` and all its descendants in a snapshot. */
export function processTree(snap: CpuSnapshot, root: number): number[] {
  const tree = [root];
  for (let i = 0; i < tree.length; i++) {
    for (const [pid, s] of snap) if (s.ppid === tree[i] && !tree.includes(pid)) tree.push(pid);
  }
  return tree.filter((pid) => snap.has(pid));
}

/**
 * CPU seconds used between two snapshots by processes that are not the
 * harness or its descendants, with the three biggest users. Processes that
 * started and ended between the snapshots are not seen.
 */
export function foreignCpu(before: CpuSnapshot, after: CpuSnapshot, root = process.pid): { seconds: number; top: string } {
  const ours = new Set<number>([root]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, s] of after) {
      if (!ours.has(pid) && ours.has(s.ppid)) {
        ours.add(pid);
        grew = true;
      }
    }
  }
  let total = 0;
  const byComm = new Map<string, number>();
  for (const [pid, s] of after) {
    if (ours.has(pid)) continue;
    const prev = before.get(pid);
    const dt = prev && prev.start === s.start ? s.ticks - prev.ticks : s.ticks;
    if (dt <= 0) continue;
    total += dt;
    byComm.set(s.comm, (byComm.get(s.comm) ?? 0) + dt);
  }
  const top = [...byComm].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([c, t]) => `${c}:${(t / CLK_TCK).toFixed(1)}s`).join(', ');
  return { seconds: total / CLK_TCK, top };
}
