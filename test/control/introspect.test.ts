import assert from 'node:assert/strict';
import { test } from 'node:test';
import { client, startServer } from './helpers.js';

type Info = Record<string, unknown> & { name: string; 'meta-type': string };

test('query-qmp-schema describes every command and event, and every type it names', async () => {
  const exports = { serverRunning: false } as never;
  const t = await startServer({ exports, jobs: { list: () => [] } as never, replication: {} as never });
  const c = await client(t.path);
  try {
    const schema = await c.execute<Info[]>('query-qmp-schema');
    const byName = new Map<string, Info>();
    for (const e of schema) {
      assert.ok(!byName.has(e.name), `${e.name} defined twice`);
      byName.set(e.name, e);
    }
    const commands = (await c.execute<Array<{ name: string }>>('query-commands')).map((x) => x.name);
    for (const name of commands) assert.equal(byName.get(name)?.['meta-type'], 'command', name);
    for (const ev of ['BLOCK_EXPORT_DELETED', 'JOB_STATUS_CHANGE', 'COLO_BLK_REPLICATION_STAGE']) assert.equal(byName.get(ev)?.['meta-type'], 'event');

    const refs = (e: Info): string[] => {
      const out: string[] = [];
      for (const k of ['arg-type', 'ret-type', 'element-type']) if (typeof e[k] === 'string') out.push(e[k] as string);
      for (const m of (e.members as Array<{ type?: string }> | undefined) ?? []) if (m.type) out.push(m.type);
      for (const v of (e.variants as Array<{ type: string }> | undefined) ?? []) out.push(v.type);
      return out;
    };
    for (const e of schema) for (const r of refs(e)) assert.ok(byName.has(r), `${e.name} refers to undefined type ${r}`);
    assert.deepEqual(byName.get('str'), { name: 'str', 'meta-type': 'builtin', 'json-type': 'string' });

    // The shape a QEMU-aware client probes: nbd-server-start's arguments, as QEMU 7.2 describes them.
    const start = byName.get(byName.get('nbd-server-start')!['arg-type'] as string)!;
    assert.deepEqual((start.members as Array<{ name: string; default?: null }>).map((m) => [m.name, 'default' in m]), [
      ['addr', false], ['tls-creds', true], ['tls-authz', true], ['max-connections', true],
    ]);
    const addr = byName.get((start.members as Array<{ type: string }>)[0]!.type)!;
    assert.equal(addr.tag, 'type');
    assert.deepEqual((addr.variants as Array<{ case: string }>).map((v) => v.case), ['inet', 'unix', 'vsock', 'fd']);
    assert.deepEqual(byName.get('x-blockdev-change')!.features, ['unstable']);
    assert.deepEqual(byName.get('nbd-server-add')!.features, ['deprecated']);
  } finally {
    await c.close();
    await t.close();
  }
});
