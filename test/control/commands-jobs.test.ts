import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError } from '../../src/block/errors.js';
import type { JobControl, JobInfo } from '../../src/control/job-control.js';
import { client, rejectsQmp, startServer } from './helpers.js';

class FakeJobs implements JobControl {
  calls: string[] = [];
  jobs: JobInfo[] = [{
    id: 'commit0', type: 'commit', status: 'running', currentProgress: 1024, totalProgress: 4096, speed: 0,
    busy: true, paused: false, ready: false, ioStatus: 'ok', autoFinalize: true, autoDismiss: true,
  }];

  list(): JobInfo[] { return this.jobs; }
  async cancel(id: string, force: boolean): Promise<void> { this.calls.push(`cancel:${id}:${force}`); }
  async pause(id: string): Promise<void> { this.calls.push(`pause:${id}`); }
  async resume(id: string): Promise<void> { this.calls.push(`resume:${id}`); }
  async complete(id: string): Promise<void> {
    throw new BlockError('EINVAL', `Job '${id}' in state 'running' cannot accept command verb 'complete'`);
  }
  async dismiss(id: string): Promise<void> { this.calls.push(`dismiss:${id}`); }
  async finalize(id: string): Promise<void> { this.calls.push(`finalize:${id}`); }
  async setSpeed(id: string, speed: number): Promise<void> { this.calls.push(`speed:${id}:${speed}`); }
}

test('job queries have QEMU shapes; verbs reach the engine; missing jobs get QEMU classes', async () => {
  const jobs = new FakeJobs();
  const t = await startServer({ jobs });
  const c = await client(t.path);
  try {
    assert.deepEqual(await c.execute('query-block-jobs'), [{
      'auto-finalize': true, 'io-status': 'ok', device: 'commit0', 'auto-dismiss': true, busy: true, len: 4096,
      offset: 1024, status: 'running', paused: false, speed: 0, ready: false, type: 'commit',
    }]);
    assert.deepEqual(await c.execute('query-jobs'), [{ 'current-progress': 1024, status: 'running', 'total-progress': 4096, type: 'commit', id: 'commit0' }]);

    await rejectsQmp(c.execute('block-job-cancel', { device: 'nosuch' }), 'DeviceNotActive', "Block job 'nosuch' not found");
    await rejectsQmp(c.execute('block-job-dismiss', { id: 'nosuch' }), 'DeviceNotActive', "Block job 'nosuch' not found");
    await rejectsQmp(c.execute('job-cancel', { id: 'nosuch' }), 'GenericError', 'Job not found');
    await rejectsQmp(c.execute('block-job-set-speed', { device: 'commit0', speed: -1 }), 'GenericError', "Invalid parameter 'speed'");
    await rejectsQmp(c.execute('block-job-set-speed', { device: 'commit0' }), 'GenericError', "Parameter 'speed' is missing");
    await rejectsQmp(c.execute('job-complete', { id: 'commit0' }), 'GenericError', "Job 'commit0' in state 'running' cannot accept command verb 'complete'");

    await c.execute('block-job-cancel', { device: 'commit0', force: true });
    await c.execute('block-job-set-speed', { device: 'commit0', speed: 1 << 20 });
    await c.execute('block-job-pause', { device: 'commit0' });
    await c.execute('job-resume', { id: 'commit0' });
    await c.execute('job-cancel', { id: 'commit0' });
    await c.execute('job-dismiss', { id: 'commit0' });
    await c.execute('block-job-finalize', { id: 'commit0' });
    assert.deepEqual(jobs.calls, ['cancel:commit0:true', 'speed:commit0:1048576', 'pause:commit0', 'resume:commit0', 'cancel:commit0:false', 'dismiss:commit0', 'finalize:commit0']);

    t.events.emit('BLOCK_JOB_COMPLETED', { type: 'commit', device: 'commit0', len: 4096, offset: 4096, speed: 0 });
    t.events.emit('JOB_STATUS_CHANGE', { id: 'commit0', status: 'concluded' });
    assert.deepEqual((await c.waitForEvent('BLOCK_JOB_COMPLETED')).data, { type: 'commit', device: 'commit0', len: 4096, offset: 4096, speed: 0 });
    assert.deepEqual((await c.waitForEvent('JOB_STATUS_CHANGE')).data, { id: 'commit0', status: 'concluded' });
  } finally {
    await c.close();
    await t.close();
  }
});
