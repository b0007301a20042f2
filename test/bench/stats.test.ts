import assert from 'node:assert/strict';
import { test } from 'node:test';
import { best, median, ratio, summarize } from '../../bench/pair/stats.js';

test('median of odd and even counts, unsorted input left alone', () => {
  const xs = [5, 1, 3];
  assert.equal(median(xs), 3);
  assert.deepEqual(xs, [5, 1, 3]);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([7]), 7);
  assert.ok(Number.isNaN(median([])));
});

test('summarize keeps min and max, drops non-finite values, and is null when nothing is left', () => {
  assert.deepEqual(summarize([10, 30, 20, Number.NaN]), { median: 20, min: 10, max: 30, n: 3 });
  assert.equal(summarize([]), null);
  assert.equal(summarize([Number.NaN, Number.POSITIVE_INFINITY]), null);
});

test('best picks the higher or the lower median and skips missing ones', () => {
  const a = summarize([100])!;
  const b = summarize([200])!;
  assert.equal(best([a, b], 'higher'), b);
  assert.equal(best([a, b], 'lower'), a);
  assert.equal(best([null, a], 'higher'), a);
  assert.equal(best([null, null], 'lower'), null);
});

test('ratio is subject over reference, null when either is missing or the reference is zero', () => {
  assert.equal(ratio(summarize([50]), summarize([200])), 0.25);
  assert.equal(ratio(null, summarize([1])), null);
  assert.equal(ratio(summarize([1]), null), null);
  assert.equal(ratio(summarize([1]), summarize([0])), null);
});
