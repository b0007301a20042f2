/**
 * The replication engine as the QMP layer consumes it: its ReplicationControl
 * (xen-set-replication and friends, x-colo-blk-query-replication), its
 * JobControl (query-block-jobs, block-job-cancel), and the bridge that turns
 * engine events into QMP events (COLO_BLK_REPLICATION_STAGE / _ERROR,
 * COLO_BLK_JOB_PROGRESS, QUORUM_REPORT_BAD / QUORUM_FAILURE, and QEMU's job
 * events for user-visible jobs). The daemon wires one graph with these.
 */
import { BlockError } from '../block/errors.js';
import type { BlockGraph } from '../block/graph.js';
import type { QmpEventSink } from '../control/events.js';
import type { JobControl, JobInfo } from '../control/job-control.js';
import { replicationErrorEvent, type ReplicationControl } from '../control/replication-control.js';
import type { Job } from '../jobs/job.js';
import { jobRegistry } from '../jobs/registry.js';
import { replicationRegistry } from './registry.js';

export function replicationControl(graph: BlockGraph): ReplicationControl {
  const registry = replicationRegistry(graph);
  return {
    start: (mode) => registry.startAll(mode),
    stop: (failover) => registry.stopAll(failover),
    checkpoint: () => registry.checkpointAll(),
    checkError: () => registry.getErrorAfterForwarding(),
    query: () => registry.status(),
  };
}

function jobInfo(job: Job): JobInfo {
  const info = job.info();
  const out: JobInfo = {
    id: job.id,
    type: job.type,
    status: job.status,
    currentProgress: info.offset,
    totalProgress: info.len,
    speed: 0,
    busy: info.busy,
    paused: false,
    ready: info.ready,
    ioStatus: info['io-status'],
    autoFinalize: true,
    autoDismiss: true,
  };
  if (info.error !== undefined) out.error = info.error;
  return out;
}

/** Jobs run to the end by themselves (auto-finalize, auto-dismiss); only cancel applies. */
export function jobControl(graph: BlockGraph): JobControl {
  const jobs = jobRegistry(graph);
  const find = (id: string): Job => {
    const job = jobs.list().find((j) => j.id === id);
    if (!job) throw new BlockError('ENOENT', `Job '${id}' not found`);
    return job;
  };
  const refuse = (verb: string) => async (id: string): Promise<void> => {
    const job = find(id);
    throw new BlockError('EINVAL', `Job '${id}' in state '${job.status}' cannot accept command verb '${verb}'`);
  };
  return {
    list: () => jobs.list().map(jobInfo),
    cancel: async (id) => { find(id).cancel(); },
    pause: refuse('pause'),
    resume: refuse('resume'),
    complete: refuse('complete'),
    dismiss: refuse('dismiss'),
    finalize: refuse('finalize'),
    setSpeed: async (id, speed) => {
      find(id);
      if (speed !== 0) throw new BlockError('ENOTSUP', `Job '${id}' cannot be rate-limited`);
    },
  };
}

/**
 * Forwards the graph's replication, quorum and job events to a QMP event
 * sink. Internal jobs (replication's backup and commit) stay silent in
 * QEMU's job events, as in QEMU, but report progress. Returns the function
 * that stops forwarding.
 */
export function forwardEvents(graph: BlockGraph, sink: QmpEventSink): () => void {
  const events = replicationRegistry(graph).events;
  const offs: Array<() => void> = [];
  const on = <K extends Parameters<typeof events.on>[0]>(name: K, fn: Parameters<typeof events.on<K>>[1]): void => {
    events.on(name, fn);
    offs.push(() => events.off(name, fn));
  };
  on('stage', (e) => sink.emit('COLO_BLK_REPLICATION_STAGE', { 'node-name': e.node, mode: e.mode, stage: e.to, previous: e.from }));
  on('error-latched', (e) => sink.emit('COLO_BLK_REPLICATION_ERROR', replicationErrorEvent(e.node, e.mode, {
    disk: e.error.disk, role: e.error.role, operation: e.error.operation, errno: e.error.errno, desc: e.error.message,
  }, e.error.guestVisible)));
  on('job-progress', (e) => sink.emit('COLO_BLK_JOB_PROGRESS', {
    id: e.id, type: e.type, 'current-progress': e.current, 'total-progress': e.total,
  }));
  on('job-status', (e) => { if (!e.internal) sink.emit('JOB_STATUS_CHANGE', { id: e.id, status: e.status }); });
  on('job-completed', (e) => {
    if (e.internal) return;
    const data = { type: e.type, device: e.id, len: e.len, offset: e.offset, speed: 0 };
    if (e.cancelled) sink.emit('BLOCK_JOB_CANCELLED', data);
    else sink.emit('BLOCK_JOB_COMPLETED', e.error === undefined ? data : { ...data, error: e.error });
  });
  on('quorum-report-bad', (e) => sink.emit('QUORUM_REPORT_BAD', e));
  on('quorum-failure', (e) => sink.emit('QUORUM_FAILURE', e));

  const jobs = jobRegistry(graph).events;
  const onReady = ({ job }: { job: Job }): void => {
    if (job.internal) return;
    const p = job.progress;
    sink.emit('BLOCK_JOB_READY', { type: job.type, device: job.id, len: p.total, offset: p.current, speed: 0 });
  };
  jobs.on('ready', onReady);
  offs.push(() => jobs.off('ready', onReady));
  return () => { for (const off of offs) off(); };
}
