/**
 * The jobs of one graph, for `query-block-jobs` and for job events. Jobs
 * register themselves when they start and leave when they conclude (QEMU's
 * auto-dismiss), so the list only ever shows live jobs.
 */
import type { BlockGraph } from '../block/graph.js';
import type { BlockJobInfo, Job, JobOutcome, JobStatus } from './job.js';
import { TypedEmitter } from './typed-emitter.js';

export interface JobRegistryEvents {
  status: { job: Job; status: JobStatus };
  progress: { job: Job; current: number; total: number };
  ready: { job: Job };
  completed: { job: Job; outcome: JobOutcome };
}

export class JobRegistry {
  readonly events = new TypedEmitter<JobRegistryEvents>();
  private readonly jobs = new Map<string, Job>();
  private readonly unsubscribe = new Map<Job, () => void>();

  /** Live jobs; internal ones (replication's backup and commit) only when asked for. */
  list(options: { includeInternal?: boolean } = {}): Job[] {
    const all = [...this.jobs.values()];
    return options.includeInternal ? all : all.filter((j) => !j.internal);
  }

  /** What `query-block-jobs` returns: user-visible jobs only, as QEMU does. */
  queryBlockJobs(): BlockJobInfo[] {
    return this.list().map((j) => j.info());
  }

  get(id: string): Job | undefined {
    return this.jobs.get(id);
  }

  /** An id not used by any live job, derived from `base`. */
  uniqueId(base: string): string {
    if (!this.jobs.has(base)) return base;
    for (let n = 1; ; n++) {
      const id = `${base}-${n}`;
      if (!this.jobs.has(id)) return id;
    }
  }

  /** @internal Called by Job.start. */
  add(job: Job): void {
    if (this.jobs.has(job.id)) throw new Error(`Job ID '${job.id}' already in use`);
    this.jobs.set(job.id, job);
    const onStatus = (p: JobRegistryEvents['status']): void => { this.events.emit('status', p); };
    const onProgress = (p: JobRegistryEvents['progress']): void => { this.events.emit('progress', p); };
    const onReady = (p: JobRegistryEvents['ready']): void => { this.events.emit('ready', p); };
    const onCompleted = (p: JobRegistryEvents['completed']): void => { this.events.emit('completed', p); };
    job.events.on('status', onStatus).on('progress', onProgress).on('ready', onReady).on('completed', onCompleted);
    this.unsubscribe.set(job, () => {
      job.events.off('status', onStatus).off('progress', onProgress).off('ready', onReady).off('completed', onCompleted);
    });
  }

  /** @internal Called when a job concludes; its final events are still forwarded. */
  remove(job: Job): void {
    if (this.jobs.get(job.id) === job) this.jobs.delete(job.id);
    const off = this.unsubscribe.get(job);
    if (off) {
      this.unsubscribe.delete(job);
      // The job emits 'null' and 'completed' right after leaving the list.
      job.events.once('completed', () => off());
    }
  }
}

const registries = new WeakMap<BlockGraph, JobRegistry>();

export function jobRegistry(graph: BlockGraph): JobRegistry {
  let r = registries.get(graph);
  if (!r) {
    r = new JobRegistry();
    registries.set(graph, r);
  }
  return r;
}
