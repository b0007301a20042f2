/**
 * The daemons' logs: every stderr line of a pair's whole life (start, guest
 * and view writes, checkpoint, status, the primary stopping, failover,
 * shutdown) is one JSON object with `t`, `level` and `event`, and
 * `--log-level` decides which levels appear, over COLO_BLK_LOG_LEVEL.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { checkpointPair, failoverSecondary } from '../../src/control/colo-ops.js';
import { QmpClient } from '../../src/control/qmp-client.js';
import { tempDir } from '../helpers/env.js';
import { MiB, qemuIo } from './model.js';
import { startPrimary, startSecondary, stopSide } from './pair.js';
import { ProcessGroup } from './processes.js';

type Level = 'debug' | 'info' | 'warn' | 'error';
const LEVELS: Level[] = ['debug', 'info', 'warn', 'error'];

interface LogLine {
  t: string;
  level: Level;
  event: string;
}

function parseLog(name: string, stderr: string): LogLine[] {
  const lines = stderr.split('\n').filter((l) => l !== '');
  return lines.map((line) => {
    let record: Record<string, unknown>;
    try {
      record = JSON.parse(line) as Record<string, unknown>;
    } catch {
      throw new assert.AssertionError({ message: `${name}: a stderr line that is not JSON: ${line}` });
    }
    assert.ok(LEVELS.includes(record.level as Level), `${name}: no valid level in ${line}`);
    assert.equal(typeof record.event, 'string', `${name}: no event in ${line}`);
    assert.ok(!Number.isNaN(Date.parse(String(record.t))), `${name}: no time in ${line}`);
    return record as unknown as LogLine;
  });
}

/** A pair's whole life at one log level; returns both sides' parsed logs. */
async function pairLogs(level: Level, envLevel: Level): Promise<{ secondary: LogLine[]; primary: LogLine[] }> {
  const dir = tempDir('colo-blk-e2e-logs-');
  const group = new ProcessGroup();
  try {
    const env = { COLO_BLK_LOG_LEVEL: envLevel };
    writeFileSync(dir.file('p.raw'), Buffer.alloc(8 * MiB, 1));
    writeFileSync(dir.file('s.raw'), Buffer.alloc(8 * MiB, 1));
    const args = ['--log-level', level];
    const secondary = await startSecondary(group, 'colo-blk', { dir: dir.path, disk: dir.file('s.raw'), format: 'raw', args, env });
    const primary = await startPrimary(group, 'colo-blk', { dir: dir.path, disk: dir.file('p.raw'), format: 'raw', secondary: secondary.nbd, args, env });
    await qemuIo(primary.guestUri, 'raw', ['write -P 0x11 0 1M']);
    await qemuIo(secondary.viewUri, 'raw', ['write -P 0x22 2M 1M']);
    await checkpointPair(secondary.qmp, primary.qmp);
    await secondary.qmp.execute('x-colo-blk-query-replication');
    await qemuIo(primary.guestUri, 'raw', ['write -P 0x33 4M 1M']);
    assert.equal(await stopSide(primary), 0);
    assert.equal((await failoverSecondary(secondary.qmp)).stage, 'done');
    assert.equal(await stopSide(secondary), 0);
    return { secondary: parseLog('secondary', secondary.child.stderr()), primary: parseLog('primary', primary.child.stderr()) };
  } finally {
    await group.killAll();
    dir.cleanup();
  }
}

const levelsIn = (lines: LogLine[]): Set<Level> => new Set(lines.map((l) => l.level));

test('--log-level debug: every line JSON, debug lines included (even with COLO_BLK_LOG_LEVEL=error)', async () => {
  const logs = await pairLogs('debug', 'error');
  for (const side of [logs.secondary, logs.primary]) {
    assert.ok(levelsIn(side).has('debug'), 'debug lines');
    assert.ok(levelsIn(side).has('info'), 'info lines');
  }
  assert.ok(logs.secondary.some((l) => l.event === 'replication-checkpoint' && l.level === 'debug'));
  assert.ok(logs.secondary.some((l) => l.event === 'replication-failover-done'));
  assert.ok(logs.primary.some((l) => l.event === 'daemon.exit'));
});

test('--log-level info: no debug line (even with COLO_BLK_LOG_LEVEL=debug)', async () => {
  const logs = await pairLogs('info', 'debug');
  for (const side of [logs.secondary, logs.primary]) {
    assert.ok(!levelsIn(side).has('debug'), 'no debug lines');
    assert.ok(levelsIn(side).has('info'), 'info lines');
  }
});

test('--log-level warn: only warnings and errors', async () => {
  const logs = await pairLogs('warn', 'debug');
  for (const side of [logs.secondary, logs.primary]) {
    for (const l of side) assert.ok(l.level === 'warn' || l.level === 'error', `${l.level} ${l.event}`);
  }
});

test('colo-blk daemon: --log-level debug logs each QMP command as a JSON line', async () => {
  const dir = tempDir('colo-blk-e2e-logs-');
  const group = new ProcessGroup();
  try {
    const child = group.colo('daemon', ['daemon', '--qmp', `unix:${dir.file('d.qmp')}`, '--log-level', 'debug'], { COLO_BLK_LOG_LEVEL: 'error' });
    await child.waitReady();
    const qmp = await QmpClient.connect(dir.file('d.qmp'));
    await qmp.execute('query-status');
    await qmp.execute('quit').catch(() => undefined);
    await qmp.close();
    assert.equal((await child.exited).code, 0);
    const lines = parseLog('daemon', child.stderr());
    assert.ok(lines.some((l) => l.level === 'debug' && l.event === 'qmp.command'), child.stderr());
  } finally {
    await group.killAll();
    dir.cleanup();
  }
});
