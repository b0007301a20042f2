/**
 * A small job framework: an id, a type, a status that follows QEMU's job
 * states, progress as bytes done out of bytes known, cancellation, a
 * completion promise that never rejects, and events. The backup job (sync=none
 * with its copy-before-write filter) and the active-commit job build on it.
 */
import { BlockError } from '../block/errors.js';
import type { BlockGraph } from '../block/graph.js';
import { jobRegistry } from './registry.js';
import { TypedEmitter } from './typed-emitter.js';

export type JobType = 'backup' | 'commit';

/** QEMU's JobStatus values this framework goes through. */
export type JobStatus = 'created' | 'running' | 'ready' | 'aborting' | 'concluded' | 'null';

export interface JobOutcome {
  ok: boolean;
  cancelled: boolean;
  error: BlockError | null;
}

/** The shape of one `query-block-jobs` entry. */
export interface BlockJobInfo {
  type: JobType;
  device: string;
  len: number;
  offset: number;
  busy: boolean;
  paused: boolean;
  speed: number;
  'io-status': 'ok' | 'failed';
  ready: boolean;
  status: JobStatus;
  'auto-finalize': boolean;
  'auto-dismiss': boolean;
  error?: string;
}

export interface JobEvents {
  status: { job: Job; status: JobStatus };
  progress: { job: Job; current: number; total: number };
  ready: { job: Job };
  completed: { job: Job; outcome: JobOutcome };
}

/** What `run` reports when it returns normally. */
export type RunResult = 'completed' | 'cancelled';

export abstract class Job {
  readonly events = new TypedEmitter<JobEvents>();
  /** Resolves once the job has concluded, whatever the outcome. */
  readonly done: Promise<JobOutcome>;

  private statusValue: JobStatus = 'created';
  private current = 0;
  private total = 0;
  private isReady = false;
  private cancelFlag = false;
  private cancelSignal: Promise<void> | null = null;
  private wakeCancelled: (() => void) | null = null;
  private lastError: BlockError | null = null;
  private resolveDone!: (outcome: JobOutcome) => void;

  protected constructor(
    readonly graph: BlockGraph,
    readonly id: string,
    readonly type: JobType,
    /** Internal jobs (replication's) are hidden from query-block-jobs, as in QEMU. */
    readonly internal: boolean,
    /** The node the job works on, as `device` in query-block-jobs. */
    readonly device: string,
  ) {
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
  }

  get status(): JobStatus {
    return this.statusValue;
  }

  get progress(): { current: number; total: number } {
    return { current: this.current, total: this.total };
  }

  get ready(): boolean {
    return this.isReady;
  }

  get concluded(): boolean {
    return this.statusValue === 'concluded' || this.statusValue === 'null';
  }

  /**
   * Sets the job up (graph changes happen here, so a failure leaves nothing
   * behind and is reported to the caller), then runs it in the background.
   */
  async start(): Promise<void> {
    if (this.statusValue !== 'created') throw new BlockError('EINVAL', `job ${this.id} was already started`);
    await this.prepare();
    jobRegistry(this.graph).add(this);
    this.setStatus('running');
    void this.execute();
  }

  /** Asks the job to stop; `done` tells when it has. Cancelling a concluded job does nothing. */
  cancel(): void {
    if (this.concluded || this.cancelFlag) return;
    this.cancelFlag = true;
    if (this.statusValue === 'running' || this.statusValue === 'ready') this.setStatus('aborting');
    this.wakeCancelled?.();
  }

  cancelAndWait(): Promise<JobOutcome> {
    this.cancel();
    return this.done;
  }

  info(): BlockJobInfo {
    const info: BlockJobInfo = {
      type: this.type,
      device: this.device,
      len: this.total,
      offset: this.current,
      busy: this.statusValue === 'running' || this.statusValue === 'aborting',
      paused: false,
      speed: 0,
      'io-status': this.lastError ? 'failed' : 'ok',
      ready: this.isReady,
      status: this.statusValue,
      'auto-finalize': true,
      'auto-dismiss': true,
    };
    if (this.lastError) info.error = this.lastError.message;
    return info;
  }

  // ------------------------------------------------------- for subclasses

  /** Graph changes and checks before the job is visible. Throwing aborts `start`. */
  protected abstract prepare(): Promise<void>;

  /** The job's work. Throwing fails the job; it must leave the graph consistent either way. */
  protected abstract run(): Promise<RunResult>;

  protected get cancelRequested(): boolean {
    return this.cancelFlag;
  }

  /** Resolves when `cancel` is called (at once if it already was). Always the same promise. */
  protected cancellation(): Promise<void> {
    if (!this.cancelSignal) {
      this.cancelSignal = this.cancelFlag
        ? Promise.resolve()
        : new Promise((resolve) => { this.wakeCancelled = resolve; });
    }
    return this.cancelSignal;
  }

  protected setProgress(current: number, total: number): void {
    if (current === this.current && total === this.total) return;
    this.current = current;
    this.total = total;
    this.events.emit('progress', { job: this, current, total });
  }

  protected markReady(): void {
    if (this.isReady) return;
    this.isReady = true;
    if (this.statusValue === 'running') this.setStatus('ready');
    this.events.emit('ready', { job: this });
  }

  // ------------------------------------------------------------ internals

  private async execute(): Promise<void> {
    let outcome: JobOutcome;
    try {
      const result = await this.run();
      outcome = result === 'cancelled'
        ? { ok: false, cancelled: true, error: null }
        : { ok: true, cancelled: false, error: null };
    } catch (err) {
      const error = BlockError.from(err, `${this.type} job ${this.id}`);
      this.lastError = error;
      outcome = { ok: false, cancelled: false, error };
    }
    if (!outcome.ok && this.statusValue !== 'aborting') this.setStatus('aborting');
    this.setStatus('concluded');
    jobRegistry(this.graph).remove(this);
    this.setStatus('null');
    this.events.emit('completed', { job: this, outcome });
    this.resolveDone(outcome);
  }

  private setStatus(status: JobStatus): void {
    if (status === this.statusValue) return;
    this.statusValue = status;
    this.events.emit('status', { job: this, status });
  }
}
