import assert from 'node:assert/strict';
import { test } from 'node:test';
import { QmpFloat } from '../../src/control/json-value.js';
import { qdictOrder, quote, writeJson } from '../../src/control/json-write.js';

test('object members come out in the order QEMU prints them', () => {
  // Orders observed on QEMU 7.2.
  assert.equal(writeJson({ return: {}, id: 1 }), '{"return": {}, "id": 1}');
  assert.equal(writeJson({ error: { class: 'GenericError', desc: 'x' }, id: 1 }), '{"id": 1, "error": {"class": "GenericError", "desc": "x"}}');
  assert.equal(writeJson({ qemu: { major: 7, minor: 2, micro: 0 }, package: 'p' }), '{"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "p"}');
  assert.equal(writeJson({ QMP: { version: 1, capabilities: [] } }), '{"QMP": {"version": 1, "capabilities": []}}');
  assert.equal(
    writeJson({ event: 'E', data: { id: 'x' }, timestamp: { seconds: 1, microseconds: 2 } }),
    '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "E", "data": {"id": "x"}}',
  );
  assert.deepEqual(
    qdictOrder('file node-name ro drv backing_file_depth encrypted detect_zeroes bps bps_rd bps_wr iops iops_rd iops_wr image cache write_threshold'.split(' ')),
    'iops_rd detect_zeroes image iops_wr ro node-name backing_file_depth drv iops bps_wr write_threshold encrypted bps bps_rd cache file'.split(' '),
  );
  assert.deepEqual(qdictOrder(['node-name', 'shutting-down', 'type', 'id']), ['node-name', 'shutting-down', 'type', 'id']);
  assert.deepEqual(qdictOrder(['writeback', 'direct', 'no-flush']), ['no-flush', 'direct', 'writeback']);
});

test('insertion order can be kept, for requests', () => {
  assert.equal(writeJson({ execute: 'x', arguments: { b: 1, a: 2 }, id: 3 }, { order: 'insertion' }), '{"execute": "x", "arguments": {"b": 1, "a": 2}, "id": 3}');
});

test('strings are escaped as QEMU escapes them', () => {
  assert.equal(quote('plain text / ok'), '"plain text / ok"');
  assert.equal(quote('"\\\b\f\n\r\t'), '"\\"\\\\\\b\\f\\n\\r\\t"');
  assert.equal(quote('\u0000\u001f\u007f\u0080é中'), '"\\u0000\\u001F\\u007F\\u0080\\u00E9\\u4E2D"');
  assert.equal(quote('😀'), '"\\uD83D\\uDE00"');
  assert.equal(quote('\ud800x\udc00'), '"\\uFFFDx\\uFFFD"', 'lone surrogates');
  assert.equal(quote('\ufffe\ufdd0'), '"\\uFFFD\\uFFFD"', 'noncharacters');
});

test('numbers: integers exact, floats as %.17g, undefined members dropped', () => {
  assert.equal(writeJson([1, -0, 2n ** 64n - 1n, new QmpFloat(5), 0.5, new QmpFloat(Infinity)]), '[1, 0, 18446744073709551615, 5, 0.5, null]');
  assert.equal(writeJson({ a: undefined, b: null, c: [] }), '{"b": null, "c": []}');
  assert.throws(() => writeJson({ f: () => 1 }), /cannot serialise a function/);
});
