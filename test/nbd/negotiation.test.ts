import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { Info, Opt, Rep } from '../../src/nbd/constants.js';
import { ServerNegotiation, transmissionFlags, type ExportDescriptor, type NegotiationStep } from '../../src/nbd/negotiation.js';
import { goData, metaData, u32 } from './wire.js';

const exports: ExportDescriptor[] = [
  { name: 'disk', description: 'the disk', size: 1 << 20, writable: true, allocationDepth: true },
  { name: 'ro', description: '', size: 4096, writable: false, allocationDepth: false },
];
const catalog = {
  find: (n: string) => exports.find((e) => e.name === n),
  list: () => exports,
};
const SIZES = { minimum: 1, preferred: 4096, maximum: 32 << 20 };

function fresh(flags = 3): ServerNegotiation {
  const n = new ServerNegotiation(catalog, SIZES);
  assert.equal(n.onClientFlags(flags).end, undefined);
  return n;
}

interface Reply { option: number; type: number; data: Buffer }

function replies(step: NegotiationStep): Reply[] {
  return step.replies.map((b) => ({ option: b.readUInt32BE(8), type: b.readUInt32BE(12), data: b.subarray(20) }));
}

function opt(n: ServerNegotiation, code: number, data: Buffer | null = Buffer.alloc(0)): NegotiationStep {
  return n.onOption({ kind: 'option', code, length: data?.length ?? 100000, data });
}

function contexts(step: NegotiationStep): Array<[number, string]> {
  return replies(step).filter((r) => r.type === Rep.META_CONTEXT).map((r) => [r.data.readUInt32BE(0), r.data.toString('utf8', 4)]);
}

test('transmission flags match qemu-nbd: 0x0ded writable with structured replies, DF dropped without', () => {
  assert.equal(transmissionFlags(true, true), 0x0ded);
  assert.equal(transmissionFlags(true, false), 0x0d6d);
  assert.equal(transmissionFlags(false, true), 0x058f);
  assert.equal(transmissionFlags(false, false), 0x050f);
});

test('unknown client flags end the connection; a client without fixed newstyle may only send EXPORT_NAME', () => {
  const n = new ServerNegotiation(catalog, SIZES);
  assert.equal(n.onClientFlags(4).end, 'error');
  const old = fresh(0);
  assert.equal(opt(old, Opt.LIST).end, 'error');
  const step = opt(fresh(0), Opt.EXPORT_NAME, Buffer.from('disk'));
  assert.ok(step.session);
  assert.equal(step.replies[0]!.length, 134, 'zeroes unless NO_ZEROES');
  const nz = opt(fresh(3), Opt.EXPORT_NAME, Buffer.from('disk'));
  assert.equal(nz.replies[0]!.length, 10);
  assert.equal(nz.replies[0]!.readUInt16BE(8), 0x0d6d);
  assert.equal(opt(fresh(), Opt.EXPORT_NAME, Buffer.from('nope')).end, 'error', 'EXPORT_NAME cannot fail politely');
});

test('LIST names every export with its description; data makes it invalid', () => {
  const r = replies(opt(fresh(), Opt.LIST));
  assert.deepEqual(r.map((x) => x.type), [Rep.SERVER, Rep.SERVER, Rep.ACK]);
  assert.equal(r[0]!.data.readUInt32BE(0), 4);
  assert.equal(r[0]!.data.toString('utf8', 4), 'diskthe disk');
  assert.equal(replies(opt(fresh(), Opt.LIST, Buffer.from([0])))[0]!.type, Rep.ERR_INVALID);
});

test('INFO and GO send NAME, DESCRIPTION, BLOCK_SIZE then EXPORT, in QEMU order; GO starts transmission', () => {
  const n = fresh();
  const info = opt(n, Opt.INFO, goData('disk', [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE, 99]));
  assert.equal(info.session, undefined);
  const r = replies(info);
  assert.deepEqual(r.map((x) => [x.type, x.type === Rep.INFO ? x.data.readUInt16BE(0) : -1]), [
    [Rep.INFO, Info.NAME], [Rep.INFO, Info.DESCRIPTION], [Rep.INFO, Info.BLOCK_SIZE], [Rep.INFO, Info.EXPORT], [Rep.ACK, -1],
  ]);
  assert.equal(r[0]!.data.toString('utf8', 2), 'disk');
  assert.deepEqual([r[2]!.data.readUInt32BE(2), r[2]!.data.readUInt32BE(6), r[2]!.data.readUInt32BE(10)], [1, 4096, 32 << 20]);
  assert.equal(r[3]!.data.readUInt32BE(6), 1 << 20);
  assert.equal(r[3]!.data.readUInt16BE(10), 0x0d6d);
  const go = opt(n, Opt.GO, goData('ro'));
  assert.ok(go.session);
  assert.equal(go.session.export.name, 'ro');
  assert.equal(go.session.blockSizeRequested, false);
  assert.deepEqual(replies(go).map((x) => x.type), [Rep.INFO, Rep.INFO, Rep.ACK], 'BLOCK_SIZE is always sent');
});

test('INFO/GO errors: unknown export, inconsistent lengths, embedded NUL, over-long names', () => {
  const n = fresh();
  const unknown = replies(opt(n, Opt.GO, goData('nope')));
  assert.equal(unknown[0]!.type, Rep.ERR_UNKNOWN);
  assert.match(unknown[0]!.data.toString(), /export 'nope' not present/);
  assert.equal(replies(opt(n, Opt.GO, goData('disk').subarray(0, 9)))[0]!.type, Rep.ERR_INVALID);
  assert.equal(replies(opt(n, Opt.GO, Buffer.concat([goData('disk'), Buffer.from([0])])))[0]!.type, Rep.ERR_INVALID);
  assert.equal(replies(opt(n, Opt.GO, goData('di\0sk')))[0]!.type, Rep.ERR_INVALID);
  assert.equal(replies(opt(n, Opt.GO, Buffer.concat([u32(5000), Buffer.alloc(5002)])))[0]!.type, Rep.ERR_INVALID);
  assert.equal(replies(opt(n, Opt.GO, Buffer.alloc(3)))[0]!.type, Rep.ERR_INVALID);
  assert.ok(opt(n, Opt.GO, goData('disk')).session, 'the handshake goes on after errors');
});

test('STRUCTURED_REPLY: ACK, then ERR_INVALID for a repeat or for data', () => {
  const n = fresh();
  assert.equal(replies(opt(n, Opt.STRUCTURED_REPLY, Buffer.from([1])))[0]!.type, Rep.ERR_INVALID);
  assert.equal(replies(opt(n, Opt.STRUCTURED_REPLY))[0]!.type, Rep.ACK);
  assert.equal(replies(opt(n, Opt.STRUCTURED_REPLY))[0]!.type, Rep.ERR_INVALID);
  const s = opt(n, Opt.GO, goData('disk')).session!;
  assert.equal(s.structured, true);
  assert.equal(s.txFlags, 0x0ded);
});

test('meta contexts follow QEMU: fixed ids, wildcards for LIST only, unknown names ignored', () => {
  const n = fresh();
  assert.equal(replies(opt(n, Opt.SET_META_CONTEXT, metaData('disk', ['base:allocation'])))[0]!.type, Rep.ERR_INVALID,
    'needs structured replies first');
  opt(n, Opt.STRUCTURED_REPLY);
  assert.deepEqual(contexts(opt(n, Opt.LIST_META_CONTEXT, metaData('disk', []))), [[0, 'base:allocation'], [0, 'qemu:allocation-depth']]);
  assert.deepEqual(contexts(opt(n, Opt.LIST_META_CONTEXT, metaData('disk', ['base:']))), [[0, 'base:allocation']]);
  assert.deepEqual(contexts(opt(n, Opt.LIST_META_CONTEXT, metaData('disk', ['qemu:']))), [[0, 'qemu:allocation-depth']]);
  assert.deepEqual(contexts(opt(n, Opt.LIST_META_CONTEXT, metaData('disk', ['x-foo:bar', 'base:nothing']))), []);
  assert.deepEqual(contexts(opt(n, Opt.SET_META_CONTEXT, metaData('disk', ['base:', 'qemu:']))), [], 'wildcards select nothing');
  const set = opt(n, Opt.SET_META_CONTEXT, metaData('disk', ['qemu:allocation-depth', 'nbd:x', 'base:allocation', 'q'.repeat(5000)]));
  assert.deepEqual(contexts(set), [[0, 'base:allocation'], [1, 'qemu:allocation-depth']]);
  assert.equal(replies(set).at(-1)!.type, Rep.ACK);
  assert.equal(replies(opt(n, Opt.SET_META_CONTEXT, metaData('disk', ['base:alloc\0ation'])))[0]!.type, Rep.ERR_INVALID);
  assert.equal(replies(opt(n, Opt.SET_META_CONTEXT, metaData('disk', ['base:allocation']).subarray(0, 14)))[0]!.type, Rep.ERR_INVALID);
  // A failed SET still replaces the selection: nothing is selected now.
  assert.deepEqual(opt(n, Opt.GO, goData('disk')).session!.meta, { baseAllocation: false, allocationDepth: false });
});

test('contexts selected for one export do not apply to another; unknown exports get ERR_UNKNOWN', () => {
  const n = fresh();
  opt(n, Opt.STRUCTURED_REPLY);
  assert.equal(replies(opt(n, Opt.LIST_META_CONTEXT, metaData('nope', [])))[0]!.type, Rep.ERR_UNKNOWN);
  assert.deepEqual(contexts(opt(n, Opt.SET_META_CONTEXT, metaData('disk', ['base:allocation']))), [[0, 'base:allocation']]);
  assert.deepEqual(opt(n, Opt.GO, goData('ro')).session!.meta, { baseAllocation: false, allocationDepth: false });
  assert.deepEqual(contexts(opt(n, Opt.LIST_META_CONTEXT, metaData('ro', []))), [[0, 'base:allocation']],
    'qemu:allocation-depth only on exports that enable it');
  assert.deepEqual(contexts(opt(n, Opt.SET_META_CONTEXT, metaData('ro', ['qemu:allocation-depth']))), []);
  const m = fresh();
  opt(m, Opt.STRUCTURED_REPLY);
  opt(m, Opt.SET_META_CONTEXT, metaData('disk', ['base:allocation']));
  assert.deepEqual(opt(m, Opt.GO, goData('disk')).session!.meta, { baseAllocation: true, allocationDepth: false });
});

test('options we do not implement get ERR_UNSUP and the handshake continues; ABORT is acknowledged', () => {
  const n = fresh();
  for (const code of [Opt.STARTTLS, Opt.EXTENDED_HEADERS, Opt.PEEK_EXPORT, 12, 0x7fffffff]) {
    const r = replies(opt(n, code, Buffer.from('data')));
    assert.deepEqual([r.length, r[0]!.option, r[0]!.type], [1, code, Rep.ERR_UNSUP]);
  }
  assert.equal(replies(opt(n, Opt.GO, null))[0]!.type, Rep.ERR_TOO_BIG, 'a known option whose data was too long');
  assert.equal(replies(opt(n, 77, null))[0]!.type, Rep.ERR_UNSUP);
  const abort = opt(n, Opt.ABORT, Buffer.from('ignored'));
  assert.equal(abort.end, 'abort');
  assert.equal(replies(abort)[0]!.type, Rep.ACK);
});

test('fuzz: any option code and data gets well-formed replies and never throws', () => {
  fc.assert(fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 14 }), fc.uint8Array({ maxLength: 64 }))), (options) => {
    const n = fresh();
    for (const [code, data] of options) {
      const step = opt(n, code, Buffer.from(data));
      for (const r of step.replies) {
        if (code === Opt.EXPORT_NAME) continue;
        assert.equal(r.readUInt32BE(0), 0x0003e889);
        assert.equal(r.readUInt32BE(16), r.length - 20);
      }
      if (step.end || step.session) break;
    }
  }), { numRuns: 2000 });
});
