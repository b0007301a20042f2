import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fioArgs, parseFioJson } from '../../bench/pair/fio.js';

/** Trimmed from a real fio 3.33 run (nbd engine against qemu-nbd). */
const SAMPLE = {
  'fio version': 'fio-3.33',
  jobs: [{
    jobname: 't', groupid: 0, error: 0,
    write: {
      io_bytes: 99098624, bw_bytes: 98999624, iops: 24169.83017, runtime: 1001, total_ios: 24194,
      clat_ns: { mean: 3131.929652, percentile: { '50.000000': 2640, '99.000000': 4448 } },
      lat_ns: { mean: 40741.663925 },
    },
    usr_cpu: 10.2, sys_cpu: 13.1,
  }],
};

test('parses the write side of the first job', () => {
  const r = parseFioJson(JSON.stringify(SAMPLE, null, 1));
  assert.equal(r.iops, 24169.83017);
  assert.equal(r.mibps, 98999624 / 2 ** 20);
  assert.equal(r.totalIos, 24194);
  assert.equal(r.ioBytes, 99098624);
  assert.equal(r.runtimeMs, 1001);
  assert.equal(r.clatP50Us, 2.64);
  assert.equal(r.clatP99Us, 4.448);
  assert.ok(Math.abs(r.latMeanUs - 40.741663925) < 1e-9);
  assert.equal(r.clientUsrCpu, 10.2);
});

test('notes that fio prints around the JSON document are skipped', () => {
  const text = `note: both iodepth >= 1 and synchronous I/O engine are selected\n${JSON.stringify(SAMPLE)}\nfio: trailing note\n`;
  assert.equal(parseFioJson(text).totalIos, 24194);
});

test('a failed job, a missing document, no jobs or no writes are errors, not numbers', () => {
  const failed = structuredClone(SAMPLE);
  failed.jobs[0]!.error = 5;
  assert.throws(() => parseFioJson(JSON.stringify(failed)), /failed with error 5/);
  assert.throws(() => parseFioJson('fio: engine nbd not loadable'), /no JSON document/);
  assert.throws(() => parseFioJson('{"jobs": []}'), /no jobs/);
  assert.throws(() => parseFioJson('{"jobs": [{"error": 0}]}'), /no write statistics/);
  const idle = structuredClone(SAMPLE);
  idle.jobs[0]!.write.total_ios = 0;
  assert.throws(() => parseFioJson(JSON.stringify(idle)), /completed no writes/);
  assert.throws(() => parseFioJson('{"jobs": [ {"error": 0 ] }'), /not valid JSON/);
});

test('missing percentiles become NaN rather than zero', () => {
  const noPct = structuredClone(SAMPLE) as { jobs: Array<{ write: { clat_ns?: unknown } }> };
  delete noPct.jobs[0]!.write.clat_ns;
  assert.ok(Number.isNaN(parseFioJson(JSON.stringify(noPct)).clatP50Us));
});

test('command lines are the anchor\'s (REPORT.md §6)', () => {
  const seq = fioArgs({ tag: 'seq1m', rw: 'write', bs: '1M', iodepth: 1, size: 268435456 }, 'nbd://h:1/pvm', 'o.json', 'TAG');
  assert.equal(seq.join(' '),
    '--name=TAG --ioengine=nbd --uri=nbd://h:1/pvm --rw=write --bs=1M --iodepth=1 --size=268435456 --numjobs=1 --output-format=json --output=o.json');
  const rand = fioArgs({ tag: 'r', rw: 'randwrite', bs: '4k', iodepth: 16, size: 268435456, runtime: 20 }, 'URI', 'OUT.json', 'TAG');
  assert.equal(rand.join(' '),
    '--name=TAG --ioengine=nbd --uri=URI --rw=randwrite --bs=4k --iodepth=16 --size=268435456 --numjobs=1 --output-format=json --output=OUT.json --time_based --runtime=20 --norandommap --randrepeat=0');
});
