/**
 * Crash safety: a child writing and flushing in a loop is SIGKILLed at
 * varying points. Afterwards qemu-img check finds no corruption (leaks are
 * allowed), everything acknowledged by the last completed flush reads back,
 * and the image opens read-write again.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { createQcow2 } from '../../src/drivers/qcow2/index.js';
import { tempDir } from '../helpers/env.js';
import { applyToModel, batchOps, markTouched } from './crash-ops.js';
import { MiB, openImage, qemuCheck, qemuImg } from './helpers.js';
import { readU64 } from './surgery.js';

const CHILD = new URL('./crash-child.js', import.meta.url).pathname;

/** Runs the child until it has reported `killAfter` flushes, then kills it; returns the last flush reported. */
function runAndKill(image: string, seed: number, size: number, killAfter: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, image, String(seed), String(size)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let last = -1;
    let pending = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      pending += d.toString();
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        const m = /^flushed (\d+)$/.exec(line);
        if (m) last = Math.max(last, Number(m[1]));
        if (last + 1 >= killAfter) child.kill('SIGKILL');
      }
    });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (signal !== 'SIGKILL') reject(new Error(`child exited with ${code}: ${stderr}`));
      else resolve(last);
    });
  });
}

test('SIGKILL at random points leaves no corruption and loses nothing flushed', async () => {
  const dir = tempDir();
  const size = 8 * MiB;
  const rounds: Array<{ cs: number; seed: number; killAfter: number }> = [
    { cs: 65536, seed: 1, killAfter: 2 },
    { cs: 65536, seed: 2, killAfter: 5 },
    { cs: 4096, seed: 3, killAfter: 3 },
    { cs: 4096, seed: 4, killAfter: 7 },
    { cs: 512, seed: 5, killAfter: 2 },
    { cs: 512, seed: 6, killAfter: 4 },
    { cs: 65536, seed: 7, killAfter: 9 },
    { cs: 16384, seed: 8, killAfter: 1 },
  ];
  for (const { cs, seed, killAfter } of rounds) {
    const image = dir.file(`crash-${seed}.qcow2`);
    await createQcow2(image, { size, clusterSize: cs });
    const last = await runAndKill(image, seed, size, killAfter);
    assert.ok(last >= killAfter - 1, `child reported flush ${killAfter - 1}`);

    const model = Buffer.alloc(size);
    for (let b = 0; b <= last; b++) applyToModel(model, batchOps(seed, b, size), cs);
    const unknown = new Uint8Array(size);
    // Only the batch after the last acknowledged flush may be partly there.
    markTouched(unknown, batchOps(seed, last + 1, size));

    const dirty = (readU64(image, 72) & 1n) === 1n;
    const check = await qemuCheck(image);
    if (!dirty) {
      assert.ok(check.status === 0 || check.status === 3, `round ${seed}: qemu-img check found corruption:\n${check.raw}`);
    }
    const raw = dir.file('after.raw');
    await qemuImg('convert', '-O', 'raw', image, raw);
    const got = readFileSync(raw);
    for (let i = 0; i < size; i++) {
      if (!unknown[i] && got[i] !== model[i]) {
        assert.fail(`round ${seed} (cluster ${cs}, killed after flush ${last}): byte ${i} is ${got[i]}, flushed data was ${model[i]}`);
      }
    }
    // Reopening read-write works (and repairs the image if make-empty was cut short).
    const { graph, node } = await openImage(image);
    await node.write(0, Buffer.alloc(4096, 1));
    await graph.closeAll();
    const after = await qemuCheck(image);
    assert.ok(after.status === 0 || after.status === 3, `round ${seed}: after reopening:\n${after.raw}`);
  }
  dir.cleanup();
});
