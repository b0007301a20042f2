/**
 * `colo-blk demo` (`npm start`): a replicated pair on loopback, end to end.
 *
 * A secondary and a primary run as separate processes with images in a
 * temporary folder. The demo writes random data through the primary's
 * export while checkpointing every few hundred milliseconds, and writes
 * through the secondary's own view between checkpoints. Then it kills the
 * primary with SIGKILL (writes still in flight), fails over, and checks that
 * the surviving disk equals what the model predicts: the last checkpoint
 * plus the secondary's own writes. Exit status 0 only when it does.
 */
import { randomFillSync } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { BlockBackend } from '../block/backend.js';
import { checkpointPair, failoverSecondary } from '../control/colo-ops.js';
import { QmpClient } from '../control/qmp-client.js';
import { DaemonProcess } from '../demo/processes.js';
import { ModelledDisk } from '../demo/workload.js';
import { createGraph } from '../drivers/index.js';
import { setLogLevel } from '../util/log.js';
import { parseSize } from '../util/size.js';
import { lastValue, parseArgs } from './args.js';

const USAGE = `usage: colo-blk demo [--size SIZE] [--checkpoints N] [--interval MS] [--dir DIR] [--keep]
  --size SIZE        disk size (default 64M)
  --checkpoints N    checkpoints before the primary is killed (default 10)
  --interval MS      time between checkpoints (default 300)
  --dir DIR          where to put the images (default a new folder in /dev/shm or the temp dir)
  --keep             keep the images and logs afterwards
`;

interface Timings {
  checkpoints: number[];
  failoverCommandMs: number;
  failoverDoneMs: number;
  firstWriteMs: number;
}

const say = (text: string): void => { process.stdout.write(`${text}\n`); };

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor(s.length / 2)]!;
}

function fileMismatch(path: string, model: Buffer): number {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let off = 0; off < model.length; off += buf.length) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, model.length - off), off);
      const expected = model.subarray(off, off + n);
      if (!buf.subarray(0, n).equals(expected)) {
        for (let i = 0; i < n; i++) if (buf[i] !== expected[i]) return off + i;
      }
    }
    return -1;
  } finally {
    closeSync(fd);
  }
}

async function nbdBackend(addr: { host: string; port: number }, name: string): Promise<{ blk: BlockBackend; close(): Promise<void> }> {
  const graph = createGraph();
  const node = await graph.open({ driver: 'nbd', server: { type: 'inet', host: addr.host, port: String(addr.port) }, export: name });
  const blk = new BlockBackend(`demo:${name}`, node);
  return {
    blk,
    close: async () => {
      blk.detach();
      await graph.closeAll().catch(() => undefined);
    },
  };
}

export async function demoMain(argv: readonly string[]): Promise<number> {
  const args = parseArgs(argv, { withValue: ['size', 'checkpoints', 'interval', 'dir'], switches: ['keep', 'help', 'h'] });
  if (args.options.has('help') || args.options.has('h')) {
    say(USAGE.trimEnd());
    return 0;
  }
  // The demo's own NBD clients would log the primary's death it causes on purpose.
  setLogLevel('error');
  const size = parseSize(lastValue(args, 'size') ?? '64M');
  const rounds = Number(lastValue(args, 'checkpoints') ?? 10);
  const interval = Number(lastValue(args, 'interval') ?? 300);
  if (size === null || size < 1 << 20 || size % 4096 !== 0 || !(rounds >= 1) || !(interval >= 10)) {
    process.stderr.write(`colo-blk demo: bad arguments\n${USAGE}`);
    return 2;
  }
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  const given = lastValue(args, 'dir');
  const dir = given ?? mkdtempSync(join(base, 'colo-blk-demo-'));
  // Remove the folder afterwards only if the demo made it; else only its own files.
  const madeDir = given === undefined || !existsSync(given);
  mkdirSync(dir, { recursive: true });
  const keep = args.options.has('keep');
  const started = performance.now();
  const elapsed = (): string => `${((performance.now() - started) / 1000).toFixed(1).padStart(5)}s`;
  const children: DaemonProcess[] = [];
  const cleanups: Array<() => Promise<void>> = [];
  let ok = false;
  try {
    say(`colo-blk demo: a replicated ${size >> 20} MiB disk, primary and secondary as separate processes, in ${dir}`);
    const primaryDisk = join(dir, 'primary.raw');
    const secondaryDisk = join(dir, 'secondary.raw');
    const initial = randomFillSync(Buffer.allocUnsafe(size));
    writeFileSync(primaryDisk, initial);
    copyFileSync(primaryDisk, secondaryDisk);

    const secondary = await DaemonProcess.start('secondary', ['secondary', '--disk', secondaryDisk, '--listen', '127.0.0.1:0', '--qmp', join(dir, 'secondary.qmp')]);
    children.push(secondary);
    const sec = secondary.nbdAddress;
    say(`${elapsed()}  secondary ready (pid ${secondary.pid}): NBD ${sec.host}:${sec.port}, exports parent0 and svm`);
    const primary = await DaemonProcess.start('primary', ['primary', '--disk', primaryDisk, '--secondary', `nbd://${sec.host}:${sec.port}/parent0`, '--listen', '127.0.0.1:0', '--qmp', join(dir, 'primary.qmp')]);
    children.push(primary);
    say(`${elapsed()}  primary ready (pid ${primary.pid}): NBD ${primary.ready.nbd}, export pvm replicated to the secondary`);

    const secQmp = await QmpClient.connect(join(dir, 'secondary.qmp'));
    const priQmp = await QmpClient.connect(join(dir, 'primary.qmp'));
    cleanups.push(() => secQmp.close(), () => priQmp.close());
    const pvmLink = await nbdBackend(primary.nbdAddress, 'pvm');
    const svmLink = await nbdBackend(sec, 'svm');
    cleanups.push(pvmLink.close, svmLink.close);
    const pvm = new ModelledDisk(pvmLink.blk, Buffer.from(initial), 0x1234567);
    const svm = new ModelledDisk(svmLink.blk, Buffer.from(initial), 0x7654321);

    const timings: Timings = { checkpoints: [], failoverCommandMs: NaN, failoverDoneMs: NaN, firstWriteMs: NaN };
    for (let round = 1; round <= rounds; round++) {
      const tick = new Promise((r) => setTimeout(r, interval));
      await Promise.all([
        pvm.run({ concurrency: 8, maxLen: 256 * 1024, until: tick }),
        svm.run({ concurrency: 2, maxLen: 64 * 1024, until: tick }),
      ]);
      const t = await checkpointPair(secQmp, priQmp);
      timings.checkpoints.push(t.totalMs);
      // The checkpoint makes the secondary equal to the primary again.
      svm.model = Buffer.from(pvm.model);
      say(`${elapsed()}  checkpoint ${String(round).padStart(2)}/${rounds}: ${t.totalMs.toFixed(1)} ms (primary paused ${t.pauseMs.toFixed(1)} ms); so far ${pvm.stats.writes} primary writes (${(pvm.stats.bytes / 2 ** 20).toFixed(0)} MiB), ${svm.stats.writes} secondary writes`);
    }

    // After the last checkpoint: both sides write, then the primary dies mid-burst.
    await svm.run({ concurrency: 2, maxLen: 64 * 1024, count: 40 });
    const burst = pvm.run({ concurrency: 8, maxLen: 256 * 1024, count: 10_000, tolerateErrors: true });
    await pvm.run({ concurrency: 1, maxLen: 64 * 1024, count: 20 });
    await primary.stop('SIGKILL');
    await burst;
    say(`${elapsed()}  primary killed with SIGKILL while writing (${pvm.stats.failed} writes cut off)`);

    let firstWrite = 0;
    const failover = await failoverSecondary(secQmp, {
      afterCommand: async () => {
        const t0 = performance.now();
        await svm.writeOnce(4096);
        firstWrite = performance.now() - t0;
      },
    });
    timings.failoverCommandMs = failover.commandMs;
    timings.failoverDoneMs = failover.doneMs;
    timings.firstWriteMs = failover.commandMs + firstWrite;
    if (failover.stage !== 'done') throw new Error(`failover ended in stage ${failover.stage}: ${failover.error ?? ''}`);
    say(`${elapsed()}  failover: command ${failover.commandMs.toFixed(1)} ms, commit done ${failover.doneMs.toFixed(1)} ms; the secondary serves as the new primary`);
    await svm.run({ concurrency: 4, maxLen: 128 * 1024, count: 50 });

    const viewMismatch = await svm.firstMismatch();
    await svmLink.close();
    await secQmp.execute('quit').catch(() => undefined);
    await secondary.stop();
    const fileMism = fileMismatch(secondaryDisk, svm.model);
    ok = viewMismatch < 0 && fileMism < 0;
    say('');
    say('report');
    say(`  primary writes      ${pvm.stats.writes} (${(pvm.stats.bytes / 2 ** 20).toFixed(1)} MiB), ${pvm.stats.failed} cut off by the kill`);
    say(`  secondary writes    ${svm.stats.writes} (${(svm.stats.bytes / 2 ** 20).toFixed(1)} MiB)`);
    say(`  checkpoints         ${timings.checkpoints.length}, median ${median(timings.checkpoints).toFixed(1)} ms, max ${Math.max(...timings.checkpoints).toFixed(1)} ms (primary paused, secondary emptied, primary resumed)`);
    say(`  failover            command ${timings.failoverCommandMs.toFixed(1)} ms, commit finished after ${timings.failoverDoneMs.toFixed(1)} ms, first write accepted after ${timings.firstWriteMs.toFixed(1)} ms`);
    say(`  surviving disk      ${ok ? 'equals' : 'DIFFERS from'} the model (last checkpoint + the secondary's own writes)${ok ? '' : `: first difference at byte ${viewMismatch >= 0 ? viewMismatch : fileMism}`}`);
    say(`  total               ${elapsed().trim()}`);
    say(ok ? 'PASS' : 'FAIL');
    return ok ? 0 : 1;
  } catch (err) {
    process.stderr.write(`colo-blk demo: ${(err as Error).message}\n`);
    for (const c of children) {
      const lines = c.lastLogLines(5);
      if (lines.length > 0) process.stderr.write(`last log lines of the ${c.name}:\n  ${lines.join('\n  ')}\n`);
    }
    say('FAIL');
    return 1;
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    for (const c of children) await c.stop('SIGKILL');
    if (!keep && madeDir) rmSync(dir, { recursive: true, force: true });
    else if (!keep) {
      for (const f of ['primary.raw', 'secondary.raw', 'secondary.raw.active.qcow2', 'secondary.raw.hidden.qcow2', 'primary.qmp', 'secondary.qmp']) {
        rmSync(join(dir, f), { force: true });
      }
    }
    else say(`images and sockets kept in ${dir}`);
  }
}
