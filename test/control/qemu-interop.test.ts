/**
 * Against the real thing: the client drives qemu-storage-daemon 7.2, and a
 * differential check sends the same bytes to qemu-storage-daemon and to
 * colo-blk and compares the replies byte for byte (the version aside).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import type { BlockExportInfo, ExportControl } from '../../src/control/export-control.js';
import type { JobControl } from '../../src/control/job-control.js';
import { QmpClient } from '../../src/control/qmp-client.js';
import { requireTool, tempDir } from '../helpers/env.js';
import { RawClient, rejectsQmp, startServer } from './helpers.js';

function startQsd(socket: string): { proc: ChildProcess; exited: Promise<number | null> } {
  requireTool('qemu-storage-daemon');
  const proc = spawn('qemu-storage-daemon', ['--chardev', `socket,id=m,path=${socket},server=on,wait=off`, '--monitor', 'chardev=m'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return { proc, exited };
}

test('the client drives qemu-storage-daemon: greeting, query-version, blockdev-add, query-named-block-nodes, errors, events, quit', async () => {
  const dir = tempDir('colo-blk-qsd-');
  const socket = dir.file('qsd.sock');
  const { proc, exited } = startQsd(socket);
  try {
    const c = await QmpClient.connect(socket, { waitMs: 10_000 });
    assert.equal(c.greeting.version.qemu.major, 7);
    assert.ok(c.greeting.capabilities.includes('oob'));
    const v = await c.execute<{ qemu: { major: number; minor: number }; package: string }>('query-version');
    assert.deepEqual(v.qemu, c.greeting.version.qemu);

    const img = dir.file('disk.raw');
    writeFileSync(img, Buffer.alloc(1 << 20));
    await c.execute('blockdev-add', { driver: 'raw', 'node-name': 'disk0', file: { driver: 'file', filename: img } });
    const nodes = await c.execute<Array<Record<string, unknown>>>('query-named-block-nodes');
    const disk = nodes.find((n) => n['node-name'] === 'disk0')!;
    assert.equal(disk.drv, 'raw');
    assert.equal(disk.file, img);
    assert.equal((disk.image as { 'virtual-size': number })['virtual-size'], 1 << 20);

    await rejectsQmp(c.execute('blockdev-del', { 'node-name': 'nosuch' }), 'GenericError', "Failed to find node with node-name='nosuch'");
    await rejectsQmp(c.execute('nosuch'), 'CommandNotFound', 'The command nosuch has not been found');
    await rejectsQmp(c.execute('block-job-cancel', { device: 'nosuch' }), 'DeviceNotActive', "Block job 'nosuch' not found");

    await c.execute('nbd-server-start', { addr: { type: 'unix', data: { path: dir.file('nbd.sock') } } });
    await c.execute('nbd-server-add', { device: 'disk0' });
    await c.execute('nbd-server-remove', { name: 'disk0', mode: 'hard' });
    const ev = await c.waitForEvent('BLOCK_EXPORT_DELETED', { timeoutMs: 10_000 });
    assert.deepEqual(ev.data, { id: 'disk0' });

    assert.deepEqual(await c.execute('quit'), {});
    await c.waitClosed();
    assert.equal(await exited, 0);
  } finally {
    proc.kill('SIGKILL');
    dir.cleanup();
  }
});

/** Just enough of an export engine for error paths that never reach it. */
const idleExports: ExportControl = {
  serverRunning: false,
  startServer: () => Promise.reject(new Error('not used')),
  stopServer: () => Promise.resolve(),
  findExport: (): BlockExportInfo | undefined => undefined,
  hasExportName: () => false,
  addExport: () => Promise.reject(new Error('not used')),
  removeExport: () => Promise.resolve(),
  listExports: () => [],
};
const noJobs: JobControl = {
  list: () => [],
  cancel: async () => {}, pause: async () => {}, resume: async () => {}, complete: async () => {},
  dismiss: async () => {}, finalize: async () => {}, setSpeed: async () => {},
};

/**
 * Inputs on which colo-blk must answer exactly as QEMU does. Each leaves
 * the stream balanced, so the marker command after it is parsed on its own.
 */
function conformanceInputs(img: string, missing: string): string[] {
  return [
    '{"execute":"query-version","id":"early"}',
    '{"execute":"nosuch"}',
    '{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}',
    '{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}',
    '{"execute":"qmp_capabilities","arguments":{"foo":1}}',
    '{"execute":"qmp_capabilities","id":{"k":"v","n":18446744073709551615}}',
    '{"execute":"qmp_capabilities"}',
    '{ "execute": }',
    '[1,2]',
    '{"foo":1}',
    '{"execute":"query-version","foo":1,"id":1}',
    '{"execute":1,"id":[1]}',
    '{"execute":"query-version","arguments":[]}',
    '{"execute":"query-version","arguments":null}',
    '{"execute":"query-version","arguments":{"x":1}}',
    '{"exec-oob":"query-version","id":9}',
    '{"execute":"query-version","control":{}}',
    `{'execute':'query-version','id':'a\\'b'}`,
    '{"execute":"query-version","id":"\u00e9\u4e2d\ud83d\ude00/\\u0000\\u001f\\u007f"}',
    '{"execute":"query-version","id":[0.1,1e-7,1e22,1e16,1e17,-0,-0.0,12345678901234567890,-9223372036854775809,true,null]}',
    '{"execute":"query-version","id":"\u0001"}',
    '{"execute":"query-version","id":01}',
    '{"execute":"query-version","id":tru}',
    '{"execute":"query-version","id":True}',
    '{"execute":"query-version","id":"\\ud800"}',
    '{"execute":"query-version","id":"\\x"}',
    '{"execute":"query-version" "id":1}',
    '{"execute":"query-version","id":1,"id":2}',
    '{1:2}',
    '[1 2]',
    '[1,]',
    '[}',
    `${'['.repeat(1025)}${']'.repeat(1025)}`,
    '\u00ff',
    '{"execute":"query-commandz","id":2}',
    '{"execute":"blockdev-add","arguments":{"node-name":"d1"}}',
    '{"execute":"blockdev-add","arguments":{"driver":"nosuch","node-name":"d1"}}',
    `{"execute":"blockdev-add","arguments":{"driver":"raw","file":{"driver":"file","filename":"${img}"}}}`,
    `{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"d1","file":{"driver":"file","filename":"${missing}"}}}`,
    '{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"d1","file":"nosuch"}}',
    `{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"d0","file":{"driver":"file","filename":"${img}"}},"id":"add"}`,
    `{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"d0","file":{"driver":"file","filename":"${img}"}}}`,
    '{"execute":"blockdev-del","arguments":{}}',
    '{"execute":"blockdev-del","arguments":{"node-name":5}}',
    '{"execute":"blockdev-del","arguments":{"node-name":"nosuch"}}',
    '{"execute":"blockdev-del","arguments":{"node-name":"d0","x":1}}',
    '{"execute":"query-named-block-nodes","arguments":{"flat":"yes"}}',
    '{"execute":"x-blockdev-change","arguments":{}}',
    '{"execute":"x-blockdev-change","arguments":{"parent":"nosuch","node":"d0"}}',
    '{"execute":"x-blockdev-change","arguments":{"parent":"d0"}}',
    '{"execute":"x-blockdev-change","arguments":{"parent":"d0","child":"file","node":"d0"}}',
    '{"execute":"x-blockdev-change","arguments":{"parent":"d0","child":"children.7"}}',
    '{"execute":"x-blockdev-change","arguments":{"parent":"d0","node":"nosuch"}}',
    '{"execute":"x-blockdev-change","arguments":{"parent":"d0","child":5}}',
    '{"execute":"nbd-server-stop"}',
    '{"execute":"nbd-server-start","arguments":{}}',
    '{"execute":"nbd-server-start","arguments":{"addr":{}}}',
    '{"execute":"nbd-server-start","arguments":{"addr":{"type":"bogus"}}}',
    '{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet"}}}',
    '{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{}}}}',
    '{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"127.0.0.1"}}}}',
    '{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"127.0.0.1","port":10809}}}}',
    '{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"127.0.0.1","port":"1","foo":1}}}}',
    '{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"/x"}},"max-connections":-1}}',
    '{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"/x"}},"max-connections":4294967296}}',
    '{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"/x"}},"max-connections":1.5}}',
    // (fd addresses are left out: qemu-storage-daemon says "only QEMU supports file descriptor
    // passing", qemu-system-x86_64 "File descriptor named 'myfd' has not been found"; colo-blk
    // gives the latter.)
    '{"execute":"nbd-server-add","arguments":{}}',
    '{"execute":"nbd-server-add","arguments":{"device":"nosuch"}}',
    '{"execute":"nbd-server-add","arguments":{"device":"d0"}}',
    '{"execute":"nbd-server-remove","arguments":{}}',
    '{"execute":"nbd-server-remove","arguments":{"name":"nosuch"}}',
    '{"execute":"nbd-server-remove","arguments":{"name":"x","mode":"bogus"}}',
    '{"execute":"block-export-add","arguments":{}}',
    '{"execute":"block-export-add","arguments":{"type":"nbd"}}',
    '{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1"}}',
    '{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1","node-name":"nosuch"}}',
    '{"execute":"block-export-add","arguments":{"type":"bogus","id":"e1","node-name":"d0"}}',
    '{"execute":"block-export-add","arguments":{"type":"nbd","id":"x y","node-name":"d0"}}',
    '{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1","node-name":"d0"}}',
    '{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1","node-name":"d0","bitmaps":[5]}}',
    '{"execute":"block-export-del","arguments":{}}',
    '{"execute":"block-export-del","arguments":{"id":"nosuch"}}',
    '{"execute":"query-block-exports"}',
    '{"execute":"query-block-jobs"}',
    '{"execute":"query-jobs"}',
    '{"execute":"block-job-cancel","arguments":{"device":"nosuch"}}',
    '{"execute":"block-job-set-speed","arguments":{"device":"nosuch"}}',
    '{"execute":"job-cancel","arguments":{"id":"nosuch"}}',
    '{"execute":"job-dismiss","arguments":{}}',
    '{"execute":"qmp_capabilities","id":"again"}',
    '{"execute":"blockdev-del","arguments":{"node-name":"d0"}}',
    '{"execute":"query-named-block-nodes"}',
  ];
}

const VERSION = /\{"qemu": \{"micro": \d+, "minor": \d+, "major": \d+\}, "package": "[^"]*"\}/g;

async function transcript(path: string, inputs: string[]): Promise<string[]> {
  const c = await RawClient.connect(path);
  const out = [(await c.next()).replace(VERSION, '<version>').replace('["oob"]', '[]')];
  for (let i = 0; i < inputs.length; i++) {
    c.send(Buffer.from(inputs[i]!, inputs[i] === '\u00ff' ? 'latin1' : 'utf8'));
    c.send(`\n{"execute":"query-version","id":"sync-${i}"}`);
    out.push(`>> ${inputs[i]!.slice(0, 100)}`);
    for (const line of await c.until(`sync-${i}`)) out.push(line.replace(VERSION, '<version>'));
  }
  c.close();
  return out;
}

test('colo-blk answers byte for byte like qemu-storage-daemon 7.2 (the version aside)', async () => {
  const dir = tempDir('colo-blk-conformance-');
  const socket = dir.file('qsd.sock');
  const { proc, exited } = startQsd(socket);
  const ours = await startServer({ exports: idleExports, jobs: noJobs });
  try {
    // QEMU rejects a second opener of an image it locks, so each side gets its own copy of the same name.
    writeFileSync(dir.file('a.raw'), Buffer.alloc(65536));
    const probe = await QmpClient.connect(socket, { waitMs: 10_000 });
    await probe.close();
    const img = dir.file('a.raw');
    const missing = dir.file('missing.raw');
    const qemu = await transcript(socket, conformanceInputs(img, missing));
    const colo = await transcript(ours.path, conformanceInputs(img, missing));
    assert.equal(colo.length, qemu.length);
    for (let i = 0; i < qemu.length; i++) assert.equal(colo[i], qemu[i], `line ${i}`);
    const q = await QmpClient.connect(socket);
    await q.execute('quit');
    await q.waitClosed();
    assert.equal(await exited, 0);
  } finally {
    proc.kill('SIGKILL');
    await ours.close();
    dir.cleanup();
  }
});
