import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { CLI, run, tempDir } from '../helpers/env.js';

test('the demo runs a pair, kills the primary, fails over and verifies the surviving disk', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const work = dir.file('demo');
  const r = await run(process.execPath, [CLI, 'demo', '--size', '16M', '--checkpoints', '3', '--interval', '100', '--dir', work]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /checkpoint {2}3\/3: /);
  assert.match(r.stdout, /primary killed with SIGKILL/);
  assert.match(r.stdout, /surviving disk {6}equals the model/);
  assert.match(r.stdout, /^PASS$/m);
  assert.equal(existsSync(work), false, 'the demo cleans up its folder');
});
