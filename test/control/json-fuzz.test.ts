import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { JsonMessageStream, parseJsonText } from '../../src/control/json-stream.js';
import { toPlain } from '../../src/control/json-value.js';
import { formatDouble, writeJson } from '../../src/control/json-write.js';

const ERROR = /^(JSON parse error, .*|JSON (token size|token count|nesting depth) limit exceeded)$/s;
const LIMITS = { maxMessageBytes: 2048, maxTokens: 200, maxNesting: 16 };

/** Bytes that look like JSON often enough to reach every lexer state. */
const jsonish = fc.array(
  fc.oneof(
    fc.constantFrom(...'{}[]:,"\'\\ 0123456789-+.eEtrufalsn\t\r\n'.split('').map((c) => c.charCodeAt(0))),
    fc.integer({ min: 0, max: 255 }),
  ),
  { maxLength: 600 },
).map((a) => Buffer.from(a));

test('arbitrary bytes give only well-formed events, memory stays bounded, and the stream stays usable', () => {
  fc.assert(fc.property(jsonish, fc.array(fc.nat(), { maxLength: 8 }), (input, cuts) => {
    const s = new JsonMessageStream(LIMITS);
    let pos = 0;
    for (const c of [...cuts.map((x) => x % (input.length + 1)).sort((a, b) => a - b), input.length]) {
      s.write(input.subarray(pos, Math.max(pos, c)));
      pos = Math.max(pos, c);
      for (const ev of s.readAll()) {
        if (ev.kind === 'error') assert.match(ev.message, ERROR);
        else writeJson(ev.value);
      }
      assert.ok(s.collectedBytes <= LIMITS.maxMessageBytes + 1);
    }
    // Whatever state the garbage left, 0xFF and a newline resynchronise.
    s.write(Buffer.from('\xff\n{"execute":"sync"}', 'latin1'));
    const tail = s.readAll();
    const last = tail[tail.length - 1];
    assert.ok(last && last.kind === 'value', 'resynchronised');
    assert.equal(writeJson(last.value), '{"execute": "sync"}');
  }), { numRuns: 1500 });
});

test('any JSON value survives JSON.stringify, our parser at any split, and our writer', () => {
  fc.assert(fc.property(fc.jsonValue({ maxDepth: 6 }), fc.nat(), (value, cut) => {
    const text = Buffer.from(JSON.stringify({ v: value }), 'utf8');
    const at = cut % (text.length + 1);
    const s = new JsonMessageStream();
    s.write(text.subarray(0, at));
    s.write(text.subarray(at));
    const events = s.readAll();
    assert.equal(events.length, 1);
    const ev = events[0]!;
    assert.equal(ev.kind, 'value');
    if (ev.kind !== 'value') return;
    const expected = JSON.parse(JSON.stringify({ v: value })) as unknown;
    // Integers beyond 2^53 stay exact (bigint); JSON.parse rounds them the same way as `expected`.
    const plain = JSON.stringify(toPlain(ev.value), (_k, x: unknown) => (typeof x === 'bigint' ? Number(x) : x));
    assert.deepEqual(JSON.parse(plain), expected);
    // What we write is valid JSON with the same content (integers stay integers).
    assert.deepEqual(JSON.parse(writeJson(ev.value)), expected);
    assert.deepEqual(JSON.parse(writeJson(parseJsonText(writeJson(ev.value)))), expected);
  }), { numRuns: 1500 });
});

test('strings of any code points round-trip through the writer as pure ASCII', () => {
  const valid = fc.string({ unit: 'grapheme', maxLength: 40 }).filter((s) => !/[\ufdd0-\ufdef]|[\ufffe\uffff]|[\u{1fffe}\u{1ffff}]/u.test(s));
  fc.assert(fc.property(valid, (s) => {
    const out = writeJson(s);
    assert.match(out, /^[\x20-\x7e]*$/);
    assert.equal(parseJsonText(out), s);
  }), { numRuns: 1000 });
});

test('%.17g formatting is exact: it reads back to the same double and matches C where there is no tie', () => {
  fc.assert(fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (x) => {
    const s = formatDouble(x);
    assert.ok(Object.is(Number(s), x) || (x === 0 && Number(s) === 0), `${x} -> ${s}`);
    // Reference: toPrecision(17) rounds half up; it agrees with %.17g except on exact ties.
    const p = Math.abs(x).toPrecision(18);
    if (x !== 0 && !/5e|5$/.test(p.replace(/e.*/, '').replace(/0+$/, ''))) {
      assert.equal(s, referenceG17(x));
    }
  }), { numRuns: 3000 });
});

function referenceG17(x: number): string {
  const [mant, expText] = x.toExponential(16).split('e') as [string, string];
  const exp = Number(expText);
  if (exp < -4 || exp >= 17) {
    const m = mant.replace(/\.?0+$/, '');
    return `${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  const fixed = x.toFixed(Math.max(0, 16 - exp));
  return fixed.includes('.') ? fixed.replace(/\.?0+$/, '') : fixed;
}

test('%.17g matches values printed by QEMU and glibc', () => {
  const cases: Array<[number, string]> = [
    [0.1, '0.10000000000000001'], [1e400, 'null'], [-9223372036854775809, '-9.2233720368547758e+18'],
    [18446744073709551616, '1.8446744073709552e+19'], [123456789.123456789, '123456789.12345679'],
    [1e-7, '9.9999999999999995e-08'], [1e22, '1e+22'], [1e16, '10000000000000000'], [1e17, '1e+17'],
    [0.0001, '0.0001'], [0.00001, '1.0000000000000001e-05'], [-0, '-0'], [1.5, '1.5'],
    [5e-324, '4.9406564584124654e-324'], [1.7976931348623157e308, '1.7976931348623157e+308'],
    // An exact tie at the 17th digit: C rounds half to even.
    [1234567890123456.25, '1234567890123456.2'], [1234567890123456.75, '1234567890123456.8'],
  ];
  for (const [x, want] of cases) assert.equal(formatDouble(x), want, String(x));
});
