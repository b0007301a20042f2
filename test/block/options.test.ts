import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OptionReader, parseKeyVal, parseOptionArg } from '../../src/block/options.js';

test('dotted keyval becomes nested dictionaries and lists', () => {
  assert.deepEqual(
    parseKeyVal('driver=quorum,node-name=colo-disk0,read-pattern=fifo,vote-threshold=1,children.0=childs0,children.1.driver=raw,children.1.file.filename=a,,b'),
    {
      driver: 'quorum', 'node-name': 'colo-disk0', 'read-pattern': 'fifo', 'vote-threshold': '1',
      children: ['childs0', { driver: 'raw', file: { filename: 'a,b' } }],
    },
  );
});

test('keyval errors name the parameter', () => {
  assert.throws(() => parseKeyVal('a=1,a=2'), /Parameter 'a' is duplicate/);
  assert.throws(() => parseKeyVal('a=1,noequals'), /Expected '=' after parameter 'noequals'/);
  assert.throws(() => parseKeyVal('a=1,a.b=2'), /used inconsistently/);
  assert.deepEqual(parseKeyVal('x.qcow2,format=raw', 'file'), { file: 'x.qcow2', format: 'raw' });
});

test('JSON options are taken as they are', () => {
  assert.deepEqual(parseOptionArg('{"driver":"file","filename":"x"}'), { driver: 'file', filename: 'x' });
  assert.throws(() => parseOptionArg('{"driver":'), /invalid JSON/);
});

test('the reader converts keyval strings and reports leftovers', () => {
  const r = new OptionReader({ a: '12', b: 'on', c: 'x', d: '64k', e: 'maybe' });
  assert.equal(r.optInt('a'), 12);
  assert.equal(r.optBool('b'), true);
  assert.equal(r.optInt('d'), 65536);
  assert.throws(() => r.optBool('e'), /expects 'on' or 'off'/);
  assert.deepEqual(r.leftovers(), ['c']);
  assert.throws(() => r.string('missing'), /Parameter 'missing' is missing/);
});
