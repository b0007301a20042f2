/**
 * Job commands: the block-job-* family addresses jobs by `device` (the job
 * id) and reports a missing one as DeviceNotActive, the job-* family by
 * `id` with a GenericError, exactly as QEMU does.
 */
import type { JobControl, JobInfo } from '../job-control.js';
import { JOB_STATUSES, JOB_TYPES } from '../job-control.js';
import { QmpError } from '../errors.js';
import { command, type Command } from '../registry.js';
import { bool, enumOf, int, listOf, str, struct } from '../schema.js';

export interface JobDeps {
  jobs: JobControl;
}

const jobType = enumOf('JobType', JOB_TYPES);
const jobStatus = enumOf('JobStatus', JOB_STATUSES);

const blockJobInfo = struct('BlockJobInfo', {
  type: str,
  device: str,
  len: int,
  offset: int,
  busy: bool,
  paused: bool,
  speed: int,
  'io-status': enumOf('BlockDeviceIoStatus', ['ok', 'failed', 'nospace']),
  ready: bool,
  status: jobStatus,
  'auto-finalize': bool,
  'auto-dismiss': bool,
  '*error': str,
});

const jobInfo = struct('JobInfo', {
  id: str,
  type: jobType,
  status: jobStatus,
  'current-progress': int,
  'total-progress': int,
  '*error': str,
});

export function blockJobToWire(j: JobInfo): Record<string, unknown> {
  return {
    type: j.type,
    device: j.id,
    len: j.totalProgress,
    offset: j.currentProgress,
    busy: j.busy,
    paused: j.paused,
    speed: j.speed,
    'io-status': j.ioStatus,
    ready: j.ready,
    status: j.status,
    'auto-finalize': j.autoFinalize,
    'auto-dismiss': j.autoDismiss,
    error: j.error,
  };
}

export function jobToWire(j: JobInfo): Record<string, unknown> {
  return {
    id: j.id,
    type: j.type,
    status: j.status,
    'current-progress': j.currentProgress,
    'total-progress': j.totalProgress,
    error: j.error,
  };
}

export function jobCommands({ jobs }: JobDeps): Command[] {
  const blockJob = (id: string): string => {
    if (!jobs.list().some((j) => j.id === id)) throw new QmpError('DeviceNotActive', `Block job '${id}' not found`);
    return id;
  };
  const job = (id: string): string => {
    if (!jobs.list().some((j) => j.id === id)) throw QmpError.generic('Job not found');
    return id;
  };
  const byDevice = (name: string, verb: (id: string) => Promise<void>): Command => command({
    name,
    args: struct(`q_obj_${name}-arg`, { device: str }),
    handler: (args) => verb(blockJob(args.device)),
  });
  const byJobId = (name: string, verb: (id: string) => Promise<void>, lookup: (id: string) => string): Command => command({
    name,
    args: struct(`q_obj_${name}-arg`, { id: str }),
    handler: (args) => verb(lookup(args.id)),
  });

  return [
    command({
      name: 'query-block-jobs',
      returns: listOf(blockJobInfo),
      handler: () => jobs.list().map(blockJobToWire),
    }),
    command({
      name: 'query-jobs',
      returns: listOf(jobInfo),
      handler: () => jobs.list().map(jobToWire),
    }),
    command({
      name: 'block-job-set-speed',
      args: struct('q_obj_block-job-set-speed-arg', { device: str, speed: int }),
      async handler(args) {
        const id = blockJob(args.device);
        if (args.speed < 0) throw QmpError.generic("Invalid parameter 'speed'");
        await jobs.setSpeed(id, args.speed);
      },
    }),
    command({
      name: 'block-job-cancel',
      args: struct('q_obj_block-job-cancel-arg', { device: str, '*force': bool }),
      handler: (args) => jobs.cancel(blockJob(args.device), args.force ?? false),
    }),
    byDevice('block-job-pause', (id) => jobs.pause(id)),
    byDevice('block-job-resume', (id) => jobs.resume(id)),
    byDevice('block-job-complete', (id) => jobs.complete(id)),
    byJobId('block-job-dismiss', (id) => jobs.dismiss(id), blockJob),
    byJobId('block-job-finalize', (id) => jobs.finalize(id), blockJob),
    byJobId('job-pause', (id) => jobs.pause(id), job),
    byJobId('job-resume', (id) => jobs.resume(id), job),
    byJobId('job-cancel', (id) => jobs.cancel(id, false), job),
    byJobId('job-complete', (id) => jobs.complete(id), job),
    byJobId('job-dismiss', (id) => jobs.dismiss(id), job),
    byJobId('job-finalize', (id) => jobs.finalize(id), job),
  ];
}
