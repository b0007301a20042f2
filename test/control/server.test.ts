import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { test } from 'node:test';
import { buildRegistry } from '../../src/control/commands/index.js';
import { EventHub } from '../../src/control/events.js';
import { command, CommandRegistry } from '../../src/control/registry.js';
import { QmpServer } from '../../src/control/server.js';
import { createGraph } from '../../src/drivers/index.js';
import { setLogSink } from '../../src/util/log.js';
import { tempDir } from '../helpers/env.js';
import { deferred, RawClient, startServer } from './helpers.js';

/** A server with a `hold` command that waits for the test, and a `mark` command with a side effect. */
async function serverWithHold() {
  const gate = deferred();
  const started = deferred();
  const marks: string[] = [];
  const registry = buildRegistry({ graph: createGraph() });
  registry.add(
    command({ name: 'hold', async handler() { started.resolve(); await gate.promise; marks.push('hold-done'); return { held: true }; } }),
    command({ name: 'mark', handler() { marks.push('mark'); } }),
  );
  const dir = tempDir('colo-blk-qmp-');
  const events = new EventHub();
  const server = new QmpServer({ registry, events });
  const path = dir.file('qmp.sock');
  await server.listen({ path });
  return {
    server, events, path, gate, started, marks,
    async close() { await server.close(); events.close(); dir.cleanup(); },
  };
}

test('several clients at once, each with its own commands and ids', async () => {
  const t = await startServer();
  try {
    const clients = await Promise.all(Array.from({ length: 6 }, () => RawClient.negotiated(t.path)));
    clients.forEach((c, i) => {
      for (let k = 0; k < 5; k++) c.send(`{"execute":"query-version","id":"c${i}-${k}"}`);
    });
    await Promise.all(clients.map(async (c, i) => {
      for (let k = 0; k < 5; k++) {
        const line = await c.next();
        assert.ok(line.startsWith('{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "colo-blk '), line);
        assert.ok(line.endsWith(`"id": "c${i}-${k}"}`), line);
      }
    }));
    assert.equal(t.server.clientCount, 6);
    clients.forEach((c) => c.close());
  } finally {
    await t.close();
  }
});

function isEvent(line: string, n: number): boolean {
  const m = /^\{"timestamp": \{"seconds": \d+, "microseconds": \d+\}, "event": "TEST_EVENT", "data": \{"n": (\d+)\}\}$/.exec(line);
  return m !== null && Number(m[1]) === n;
}

test("one client's garbage does not disturb another's in-flight command or event stream", async () => {
  const s = await serverWithHold();
  try {
    const a = await RawClient.negotiated(s.path);
    const b = await RawClient.negotiated(s.path);
    const watcher = await RawClient.negotiated(s.path);
    a.send('{"execute":"hold","id":"a1"}');
    await s.started.promise;
    s.events.emitUnchecked('TEST_EVENT', { n: 1 });
    // Lexical garbage, an unknown command, excessive nesting, invalid UTF-8 and an unbalanced message.
    b.send(Buffer.from('\xff\x00}{"execute":"x"}x[1,]', 'latin1'));
    b.send(`${'['.repeat(1100)}${']'.repeat(1100)}`);
    b.send(Buffer.from('{"id":"\xc0\xaf"}{"a":[}', 'latin1'));
    s.events.emitUnchecked('TEST_EVENT', { n: 2 });
    // 0xFF gets b out of the unbalanced message.
    b.send(Buffer.from('\xff{"execute":"query-version","id":"b-sync"}', 'latin1'));
    s.gate.resolve();

    assert.ok(isEvent(await a.next(), 1));
    assert.ok(isEvent(await a.next(), 2));
    assert.equal(await a.next(), '{"return": {"held": true}, "id": "a1"}');

    const bLines = await b.until('b-sync');
    assert.ok(isEvent(bLines[0]!, 1) && isEvent(bLines[1]!, 2));
    const errors = bLines.slice(2);
    assert.ok(errors.every((l) => l.startsWith('{"error": {"class": ')), 'b only gets errors for its garbage');
    for (const desc of [
      "JSON parse error, stray '\\uFFFD'", "JSON parse error, stray ''", 'The command x has not been found',
      "JSON parse error, invalid keyword 'x'", 'JSON nesting depth limit exceeded', 'JSON parse error, invalid UTF-8 sequence in string',
    ]) assert.ok(errors.some((l) => l.includes(`"desc": "${desc}"`)), desc);

    watcher.send('{"execute":"query-version","id":"w-sync"}');
    const wLines = await watcher.until('w-sync');
    assert.equal(wLines.length, 2);
    assert.ok(isEvent(wLines[0]!, 1) && isEvent(wLines[1]!, 2));
    assert.deepEqual(s.marks, ['hold-done']);
    for (const c of [a, b, watcher]) c.close();
  } finally {
    await s.close();
  }
});

test('a client that vanishes mid-command leaves the command and the other clients unharmed', async () => {
  // Like QEMU, which reads a client's next command only after the current one, the server runs
  // what the client sent before its EOF (it cannot tell a vanished client from a half-closed one).
  const s = await serverWithHold();
  try {
    const a = await RawClient.negotiated(s.path);
    const b = await RawClient.negotiated(s.path);
    a.send('{"execute":"hold"}{"execute":"mark"}');
    await s.started.promise;
    a.close();
    b.send('{"execute":"query-version","id":"b1"}');
    s.gate.resolve();
    const line = await b.next();
    assert.ok(line.endsWith('"id": "b1"}'));
    assert.deepEqual(s.marks, ['hold-done', 'mark'], 'the held command finished, then the one queued behind it');
    await s.server.idle();
    assert.equal(s.server.clientCount, 1);
    b.close();
  } finally {
    await s.close();
  }
});

test('events go to every negotiated client, never to one still negotiating', async () => {
  const t = await startServer();
  try {
    const fresh = await RawClient.connect(t.path);
    assert.match(await fresh.next(), /^\{"QMP": /);
    const ready = await RawClient.negotiated(t.path);
    t.events.emit('BLOCK_EXPORT_DELETED', { id: 'e1' });
    fresh.send('{"execute":"qmp_capabilities","id":"sync"}');
    assert.equal(await fresh.next(), '{"return": {}, "id": "sync"}', 'no event before negotiation');
    assert.match(await ready.next(), /^\{"timestamp": \{"seconds": \d+, "microseconds": \d+\}, "event": "BLOCK_EXPORT_DELETED", "data": \{"id": "e1"\}\}$/);
    t.events.emit('BLOCK_EXPORT_DELETED', { id: 'e2' });
    assert.match(await fresh.next(), /"data": \{"id": "e2"\}/);
    assert.match(await ready.next(), /"data": \{"id": "e2"\}/);
    fresh.close();
    ready.close();
  } finally {
    await t.close();
  }
});

test('quit answers, then calls the daemon back', async () => {
  const quit = deferred();
  const t = await startServer({ onQuit: () => quit.resolve() });
  try {
    const c = await RawClient.negotiated(t.path);
    c.send('{"execute":"quit","id":9}');
    assert.equal(await c.next(), '{"return": {}, "id": 9}');
    await quit.promise;
    c.close();
  } finally {
    await t.close();
  }
});

test('a client that half-closes still gets its answers (echo ... | nc -N)', async () => {
  const t = await startServer();
  try {
    const c = await RawClient.connect(t.path);
    c.send('{"execute":"qmp_capabilities"}{"execute":"query-version","id":1}{"execute":"nosuch","id":2}');
    c.socket.end();
    const lines: string[] = [];
    for (let l = await c.nextOrEnd(); l !== null; l = await c.nextOrEnd()) lines.push(l);
    assert.equal(lines.length, 4);
    assert.ok(lines[2]!.endsWith('"id": 1}'));
    assert.equal(lines[3], '{"id": 2, "error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}');
  } finally {
    await t.close();
  }
});

test('TCP listeners work like unix ones', async () => {
  const registry = buildRegistry({ graph: createGraph() });
  const server = new QmpServer({ registry });
  try {
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    assert.ok('port' in addr && addr.port > 0);
    const c = await RawClient.connect({ host: '127.0.0.1', port: (addr as { port: number }).port });
    assert.match(await c.next(), /^\{"QMP": /);
    c.send('{"execute":"qmp_capabilities","id":"t"}');
    assert.equal(await c.next(), '{"return": {}, "id": "t"}');
    c.close();
  } finally {
    await server.close();
  }
});

test('unix socket paths: stale sockets are replaced, live ones and regular files are refused, close removes ours', async () => {
  const dir = tempDir('colo-blk-qmp-');
  try {
    const stale = dir.file('stale.sock');
    // A process killed while listening leaves its socket file behind.
    const crash = spawnSync(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))", stale]);
    assert.equal(crash.signal, 'SIGKILL');
    assert.ok(fs.statSync(stale).isSocket());
    const s1 = new QmpServer({ registry: new CommandRegistry() });
    await s1.listen({ path: stale });
    const c = await RawClient.connect(stale);
    assert.match(await c.next(), /^\{"QMP": /);
    c.close();

    const s2 = new QmpServer({ registry: new CommandRegistry() });
    await assert.rejects(s2.listen({ path: stale }), /another server is listening there/);
    const file = dir.file('regular');
    fs.writeFileSync(file, 'keep me');
    await assert.rejects(s2.listen({ path: file }), /exists and is not a socket/);
    assert.equal(fs.readFileSync(file, 'utf8'), 'keep me');

    await s1.close();
    assert.equal(fs.existsSync(stale), false);
    await s2.close();
  } finally {
    dir.cleanup();
  }
});

test('connections beyond maxClients are refused; closing the server disconnects everyone', async () => {
  const t = await startServer({}, { maxClients: 2 });
  const a = await RawClient.negotiated(t.path);
  const b = await RawClient.negotiated(t.path);
  const c = await RawClient.connect(t.path);
  assert.equal(await c.nextOrEnd(), null, 'third client closed without a greeting');
  await t.close();
  await a.closedByPeer();
  await b.closedByPeer();
  assert.equal(fs.existsSync(t.path), false);
});

test('a message over the size limit is refused and the client carries on', async () => {
  const t = await startServer({}, { limits: { maxMessageBytes: 4096 } });
  try {
    const c = await RawClient.negotiated(t.path);
    c.send(`{"execute":"query-version","id":"${'x'.repeat(100_000)}"}`);
    c.send('\n{"execute":"query-version","id":"after"}');
    const lines = await c.until('after');
    assert.equal(lines[0], '{"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}');
    assert.ok(lines.every((l) => l.startsWith('{"error": ')));
    c.close();
  } finally {
    await t.close();
  }
});

test('a client that stops reading while events pile up is disconnected; others keep their events', async () => {
  const t = await startServer({}, { maxOutputBytes: 256 * 1024 });
  const logged: string[] = [];
  setLogSink({ write: (line) => logged.push(line) });
  try {
    const slow = await RawClient.negotiated(t.path);
    const fast = await RawClient.negotiated(t.path);
    slow.socket.pause();
    const total = 2000;
    const payload = 'p'.repeat(4096);
    const fastSaw = (async () => {
      let n = 0;
      while (n < total) {
        const l = await fast.nextOrEnd();
        if (l === null) break;
        if (l.includes('"event": "FLOOD"')) n++;
      }
      return n;
    })();
    for (let sent = 0; sent < total; sent++) {
      t.events.emitUnchecked('FLOOD', { payload, sent });
      // The readers live in this process: let them run between events.
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(await fastSaw, total, 'the reading client got every event');
    assert.equal(t.server.clientCount, 1, 'the slow client was dropped');
    slow.socket.resume();
    await slow.closedByPeer();
    assert.ok(logged.some((l) => l.includes('"qmp.client_not_reading"')));
    fast.close();
  } finally {
    setLogSink({ write: (line) => process.stderr.write(line) });
    await t.close();
  }
});
