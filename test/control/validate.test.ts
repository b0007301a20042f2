import assert from 'node:assert/strict';
import { test } from 'node:test';
import { QmpError } from '../../src/control/errors.js';
import { parseJsonText } from '../../src/control/json-stream.js';
import {
  alternate, any, bool, enumOf, int, listOf, nullType, number, str, struct, uint32, union, type Infer,
} from '../../src/control/schema.js';
import { validate } from '../../src/control/validate.js';

function check(spec: Parameters<typeof validate>[0], json: string): unknown {
  return validate(spec, parseJsonText(json));
}

function fails(spec: Parameters<typeof validate>[0], json: string, desc: string): void {
  assert.throws(() => check(spec, json), (err: unknown) => {
    assert.ok(err instanceof QmpError);
    assert.equal(err.class, 'GenericError');
    assert.equal(err.desc, desc);
    return true;
  }, json);
}

const inet = struct('InetSocketAddress', { host: str, port: str, '*ipv4': bool });
const legacy = union('SocketAddressLegacy', { type: enumOf('SocketAddressType', ['inet', 'unix']) }, 'type', {
  inet: { data: inet },
  unix: { data: struct('UnixSocketAddress', { path: str }) },
});
const nbdStart = struct('NbdServerOptions', { addr: legacy, '*tls-creds': str, '*max-connections': uint32 });

test('messages of QEMU 7.2 for nbd-server-start arguments', () => {
  // Each pair was answered this way by qemu-system-x86_64 7.2.
  fails(nbdStart, '{}', "Parameter 'addr' is missing");
  fails(nbdStart, '{"addr":{}}', "Parameter 'addr.type' is missing");
  fails(nbdStart, '{"addr":{"type":"bogus"}}', "Parameter 'type' does not accept value 'bogus'");
  fails(nbdStart, '{"addr":{"type":"inet"}}', "Parameter 'addr.data' is missing");
  fails(nbdStart, '{"addr":{"type":"inet","data":{}}}', "Parameter 'addr.data.host' is missing");
  fails(nbdStart, '{"addr":{"type":"inet","data":{"host":"h"}}}', "Parameter 'addr.data.port' is missing");
  fails(nbdStart, '{"addr":{"type":"inet","data":{"host":"h","port":10809}}}', "Invalid parameter type for 'addr.data.port', expected: string");
  fails(nbdStart, '{"addr":{"type":"inet","host":"h","port":"1"}}', "Parameter 'addr.data' is missing");
  fails(nbdStart, '{"addr":{"type":"inet","data":{"host":"h","port":"1","foo":1}}}', "Parameter 'addr.data.foo' is unexpected");
  const ok = '{"addr":{"type":"inet","data":{"host":"h","port":"1"}}';
  fails(nbdStart, `${ok},"max-connections":-1}`, "Parameter 'max-connections' expects uint32_t");
  fails(nbdStart, `${ok},"max-connections":4294967296}`, "Parameter 'max-connections' expects uint32_t");
  fails(nbdStart, `${ok},"max-connections":1.5}`, "Parameter 'max-connections' expects uint64");
  fails(nbdStart, `${ok},"max-connections":"2"}`, "Parameter 'max-connections' expects uint64");
  assert.deepEqual(check(nbdStart, `${ok},"max-connections":4294967295}`), {
    addr: { type: 'inet', data: { host: 'h', port: '1' } },
    'max-connections': 4294967295,
  });
});

test('list elements are named as QEMU names them', () => {
  const caps = struct('q', { '*enable': listOf(enumOf('QMPCapability', ['oob'])) });
  fails(caps, '{"enable":"oob"}', "Invalid parameter type for 'enable', expected: array");
  fails(caps, '{"enable":[1]}', "Invalid parameter type for 'enable[0]', expected: string");
  fails(caps, '{"enable":["oob","foo"]}', "Parameter 'null' does not accept value 'foo'");
  fails(caps, '{"foo":1}', "Parameter 'foo' is unexpected");
  const bitmaps = struct('b', { '*bitmaps': listOf(alternate('BlockDirtyBitmapOrStr', [str, struct('BlockDirtyBitmap', { node: str, name: str })])) });
  fails(bitmaps, '{"bitmaps":[5]}', "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr");
  fails(bitmaps, '{"bitmaps":[{"node":"a"}]}', "Parameter 'bitmaps[0].name' is missing");
  assert.deepEqual(check(bitmaps, '{"bitmaps":["a",{"node":"n","name":"b"}]}'), { bitmaps: ['a', { node: 'n', name: 'b' }] });
  const file = struct('f', { file: alternate('BlockdevRef', [str, struct('BlockdevOptions', { driver: str })]) });
  fails(file, '{"file":5}', "Invalid parameter type for 'file', expected: BlockdevRef");
});

test('missing and ill-typed members are reported before unexpected ones, in schema order', () => {
  const s = struct('s', { a: str, b: int, '*c': bool });
  fails(s, '{"x":1}', "Parameter 'a' is missing");
  fails(s, '{"b":"no","a":1}', "Invalid parameter type for 'a', expected: string");
  fails(s, '{"a":"","b":1,"c":null}', "Invalid parameter type for 'c', expected: boolean");
  fails(s, '{"a":"","b":1,"zz":1}', "Parameter 'zz' is unexpected");
  assert.deepEqual(check(s, '{"b":2,"a":"x"}'), { a: 'x', b: 2 });
});

test('integers, numbers, null and any', () => {
  const s = struct('n', { '*i': int, '*n': number, '*z': nullType, '*v': any });
  fails(s, '{"i":1.0}', "Invalid parameter type for 'i', expected: integer");
  fails(s, '{"i":"1"}', "Invalid parameter type for 'i', expected: integer");
  fails(s, '{"i":9223372036854775808}', "Invalid parameter type for 'i', expected: integer");
  fails(s, '{"i":9007199254740993}', "Parameter 'i' is out of range (larger than 2^53)");
  fails(s, '{"n":"1"}', "Invalid parameter type for 'n', expected: number");
  fails(s, '{"z":0}', "Invalid parameter type for 'z', expected: null");
  assert.deepEqual(check(s, '{"i":-5,"n":1.5,"z":null,"v":{"deep":[1]}}'), { i: -5, n: 1.5, z: null, v: parseJsonText('{"deep":[1]}') });
  assert.deepEqual(check(s, '{"n":7}'), { n: 7 });
});

test('a union selects its variant by the tag and refuses members of other variants', () => {
  fails(legacy, '{"type":"unix","data":{"path":"p","host":"h"}}', "Parameter 'data.host' is unexpected");
  assert.deepEqual(check(legacy, '{"type":"unix","data":{"path":"p"}}'), { type: 'unix', data: { path: 'p' } });
});

test('Infer gives handlers typed arguments', () => {
  type Args = Infer<typeof nbdStart>;
  const a: Args = { addr: { type: 'unix', data: { path: 'x' } }, 'max-connections': 3 };
  // @ts-expect-error: data of the inet variant needs host and port.
  const bad: Args = { addr: { type: 'inet', data: { path: 'x' } } };
  assert.ok(a && bad);
});
