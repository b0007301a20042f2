import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError } from '../../src/block/errors.js';
import { Dispatcher } from '../../src/control/dispatcher.js';
import { QmpError } from '../../src/control/errors.js';
import { command, CommandRegistry } from '../../src/control/registry.js';
import { coreCommands } from '../../src/control/commands/core.js';
import { int, str, struct } from '../../src/control/schema.js';
import { MAX_QUEUED_REQUESTS, QmpSession, type SessionTransport } from '../../src/control/session.js';
import { rootLogger, setLogSink } from '../../src/util/log.js';
import { deferred } from './helpers.js';

class FakeTransport implements SessionTransport {
  lines: string[] = [];
  paused = false;
  pauses = 0;
  closed = false;
  pendingOutput = 0;
  private waiters: Array<{ n: number; resolve(): void }> = [];

  write(text: string): void {
    assert.ok(text.endsWith('\r\n'));
    this.lines.push(text.slice(0, -2));
    this.waiters = this.waiters.filter((w) => (this.lines.length >= w.n ? (w.resolve(), false) : true));
  }

  pauseInput(): void { this.paused = true; this.pauses++; }
  resumeInput(): void { this.paused = false; }
  close(_flush: boolean): void { this.closed = true; }

  /** Resolves once `n` lines have been written in total. */
  until(n: number): Promise<void> {
    if (this.lines.length >= n) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ n, resolve }));
  }
}

function setup(extra: Parameters<CommandRegistry['add']> = []) {
  const registry = new CommandRegistry();
  registry.add(...coreCommands({ commands: () => registry.list(), version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'colo-blk test' } }));
  registry.add(...extra);
  const dispatcher = new Dispatcher(registry, rootLogger);
  const open = () => {
    const t = new FakeTransport();
    const s = new QmpSession(t, dispatcher, { greeting: { QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'colo-blk test' }, capabilities: [] } }, log: rootLogger });
    s.start();
    return { t, s, send: (text: string) => s.receive(Buffer.from(text)) };
  };
  return { registry, dispatcher, open };
}

test('greeting, negotiation and the errors before and after it', async () => {
  const { dispatcher, open } = setup();
  const { t, send } = open();
  assert.equal(t.lines[0], '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "colo-blk test"}, "capabilities": []}}');
  send('{"execute":"query-version","id":"x"}');
  send('{"execute":"nosuch"}');
  send('{"execute":"query-version","foo":1}');
  send('{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}');
  send('{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}');
  send('{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}');
  send('{"execute":"qmp_capabilities","id":1}');
  send('{"execute":"qmp_capabilities","arguments":{"enable":[]}}');
  send('{"execute":"query-version","id":2}');
  await dispatcher.idle();
  assert.deepEqual(t.lines.slice(1), [
    `{"id": "x", "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}`,
    `{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}`,
    `{"error": {"class": "GenericError", "desc": "QMP input member 'foo' is unexpected"}}`,
    '{"error": {"class": "GenericError", "desc": "Capability oob not available"}}',
    `{"error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'foo'"}}`,
    `{"error": {"class": "GenericError", "desc": "Invalid parameter type for 'enable', expected: array"}}`,
    '{"return": {}, "id": 1}',
    '{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}',
    '{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "colo-blk test"}, "id": 2}',
  ]);
});

test('the id is echoed whatever its JSON type (members in QEMU order, as QEMU 7.2 echoes them)', async () => {
  const { dispatcher, open } = setup();
  const { t, send } = open();
  send('{"execute":"qmp_capabilities"}');
  const ids = ['"s"', '7', '-1.25', 'null', 'true', '[1,{"a":[]}]', '{"k":"v","n":18446744073709551615}', '0.1'];
  for (const id of ids) send(`{"execute":"nosuch","id":${id}}`);
  await dispatcher.idle();
  assert.deepEqual(t.lines.slice(2), [
    '"s"', '7', '-1.25', 'null', 'true', '[1, {"a": []}]', '{"n": 18446744073709551615, "k": "v"}', '0.10000000000000001',
  ].map((id) => `{"id": ${id}, "error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}`));
});

test('responses come in request order even when an earlier command is slower', async () => {
  const gate = deferred();
  const { dispatcher, open } = setup([
    command({ name: 'slow', async handler() { await gate.promise; return { slow: true }; } }),
    command({ name: 'echo', args: struct('e', { v: int }), handler: (a) => ({ v: a.v }) }),
  ]);
  const { t, send } = open();
  send('{"execute":"qmp_capabilities"}{"execute":"slow","id":1}{"execute":"echo","arguments":{"v":2},"id":2}');
  await t.until(2);
  assert.equal(t.lines.length, 2, 'nothing answered while slow runs');
  gate.resolve();
  await dispatcher.idle();
  assert.deepEqual(t.lines.slice(2), ['{"return": {"slow": true}, "id": 1}', '{"return": {"v": 2}, "id": 2}']);
});

test('handler failures map to error classes; undefined results become {}', async () => {
  const { dispatcher, open } = setup([
    command({ name: 'block-fail', handler() { throw new BlockError('ENOENT', "Cannot find device='x' nor node-name='x'"); } }),
    command({ name: 'class-fail', handler() { throw new QmpError('DeviceNotActive', "Block job 'j' not found"); } }),
    command({ name: 'bug', handler() { throw new TypeError('oops'); } }),
    command({ name: 'nothing', handler() { return undefined; } }),
    command({ name: 'not-json', handler: () => ({ f: () => 1 }) }),
    command({ name: 'needs', args: struct('n', { s: str }), handler: () => ({}) }),
  ]);
  const { t, send } = open();
  send('{"execute":"qmp_capabilities"}');
  for (const c of ['block-fail', 'class-fail', 'bug', 'nothing', 'not-json', 'needs']) send(`{"execute":"${c}"}`);
  const logged: string[] = [];
  setLogSink({ write: (line) => logged.push(line) });
  try {
    await dispatcher.idle();
  } finally {
    setLogSink({ write: (line) => process.stderr.write(line) });
  }
  assert.ok(logged.some((l) => l.includes('"qmp.handler_failed"') && l.includes('"command":"bug"')), 'a handler bug is logged');
  assert.ok(logged.some((l) => l.includes('"qmp.unserialisable_result"')));
  assert.ok(!logged.some((l) => l.includes('"command":"block-fail"')), 'expected failures are not logged as bugs');
  assert.deepEqual(t.lines.slice(2), [
    `{"error": {"class": "GenericError", "desc": "Cannot find device='x' nor node-name='x'"}}`,
    `{"error": {"class": "DeviceNotActive", "desc": "Block job 'j' not found"}}`,
    '{"error": {"class": "GenericError", "desc": "oops"}}',
    '{"return": {}}',
    '{"error": {"class": "GenericError", "desc": "internal error: cannot serialise a function as JSON"}}',
    `{"error": {"class": "GenericError", "desc": "Parameter 's' is missing"}}`,
  ]);
});

test('a client that queues many commands is paused, then resumed, and every command is answered in order', async () => {
  const gate = deferred();
  const { dispatcher, open } = setup([
    command({ name: 'block', async handler() { await gate.promise; } }),
    command({ name: 'echo', args: struct('e', { v: int }), handler: (a) => a.v }),
  ]);
  const { t, s, send } = open();
  let text = '{"execute":"qmp_capabilities"}{"execute":"block"}';
  for (let i = 0; i < 40; i++) text += `{"execute":"echo","arguments":{"v":${i}}}`;
  send(text);
  await t.until(2);
  assert.ok(t.paused, 'input paused while the queue is full');
  assert.equal(s.queuedRequests, MAX_QUEUED_REQUESTS, 'no more parsed than the queue holds');
  gate.resolve();
  await dispatcher.idle();
  assert.equal(t.paused, false, 'resumed once everything was read');
  assert.deepEqual(t.lines.slice(3), Array.from({ length: 40 }, (_, i) => `{"return": ${i}}`));
});

test('after EOF from the client, queued commands are answered and then the session closes', async () => {
  const gate = deferred();
  const { dispatcher, open } = setup([command({ name: 'wait', async handler() { await gate.promise; return 1; } })]);
  const { t, s, send } = open();
  send('{"execute":"qmp_capabilities"}{"execute":"wait"}{"execute":"query-version","id":3}');
  s.endInput();
  assert.equal(t.closed, false);
  gate.resolve();
  await dispatcher.idle();
  assert.equal(t.lines.length, 4);
  assert.equal(t.closed, true);
});

test('a session closed mid-command does not get the reply and does not disturb the dispatcher', async () => {
  const gate = deferred();
  const started = deferred();
  let finished = false;
  const { dispatcher, open } = setup([command({ name: 'wait', async handler() { started.resolve(); await gate.promise; finished = true; } })]);
  const a = open();
  const b = open();
  a.send('{"execute":"qmp_capabilities"}{"execute":"wait"}{"execute":"query-version"}');
  await started.promise;
  a.s.close();
  b.send('{"execute":"qmp_capabilities","id":"b"}');
  gate.resolve();
  await dispatcher.idle();
  assert.equal(finished, true, 'the command ran to the end');
  assert.equal(a.t.lines.length, 2, 'no reply after close, and the queued query-version was dropped');
  assert.equal(b.t.lines[1], '{"return": {}, "id": "b"}');
});

test('clients take turns: one client queueing many commands does not starve another', async () => {
  const order: string[] = [];
  const gate = deferred();
  const { dispatcher, open } = setup([
    command({ name: 'block', async handler() { await gate.promise; } }),
    command({ name: 'mark', args: struct('m', { m: str }), handler(a) { order.push(a.m); } }),
  ]);
  const [a, b, c] = [open(), open(), open()];
  for (const x of [a, b, c]) x.send('{"execute":"qmp_capabilities"}');
  await dispatcher.idle();
  c.send('{"execute":"block"}');
  a.send(['a1', 'a2', 'a3', 'a4'].map((m) => `{"execute":"mark","arguments":{"m":"${m}"}}`).join(''));
  b.send('{"execute":"mark","arguments":{"m":"b1"}}');
  gate.resolve();
  await dispatcher.idle();
  assert.deepEqual(order, ['a1', 'b1', 'a2', 'a3', 'a4']);
});

test('events reach a client only after it negotiated', async () => {
  const { dispatcher, open } = setup();
  const { t, s, send } = open();
  s.sendEvent('{"event": "EARLY"}\r\n');
  send('{"execute":"qmp_capabilities"}');
  await dispatcher.idle();
  s.sendEvent('{"event": "LATE"}\r\n');
  assert.deepEqual(t.lines.slice(1), ['{"return": {}}', '{"event": "LATE"}']);
});

test('a client that does not read its output is disconnected', () => {
  const { open } = setup();
  const { t, s } = open();
  t.pendingOutput = 100 * 1024 * 1024;
  s.send({ x: 1 });
  assert.equal(t.closed, true);
  assert.equal(s.isClosed, true);
});
