/**
 * What the job commands need from the job engine: the user-visible jobs
 * (internal ones, like QEMU's replication backup, are not listed) and the
 * verbs. The handlers report unknown ids with QEMU's messages; the engine
 * refuses verbs a job's state does not allow ("Job 'x' in state 'running'
 * cannot accept command verb 'complete'").
 */

export const JOB_TYPES = ['commit', 'stream', 'mirror', 'backup', 'create', 'amend', 'snapshot-load', 'snapshot-save', 'snapshot-delete'] as const;
export type JobType = (typeof JOB_TYPES)[number];

export const JOB_STATUSES = ['undefined', 'created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending', 'aborting', 'concluded', 'null'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];

export type JobIoStatus = 'ok' | 'failed' | 'nospace';

export interface JobInfo {
  id: string;
  type: JobType;
  status: JobStatus;
  /** Progress in bytes (QEMU: offset/len for block jobs). */
  currentProgress: number;
  totalProgress: number;
  /** Bytes per second, 0 for unlimited. */
  speed: number;
  busy: boolean;
  paused: boolean;
  ready: boolean;
  ioStatus: JobIoStatus;
  autoFinalize: boolean;
  autoDismiss: boolean;
  error?: string;
}

export interface JobControl {
  list(): JobInfo[];
  cancel(id: string, force: boolean): Promise<void>;
  pause(id: string): Promise<void>;
  resume(id: string): Promise<void>;
  complete(id: string): Promise<void>;
  dismiss(id: string): Promise<void>;
  finalize(id: string): Promise<void>;
  setSpeed(id: string, bytesPerSecond: number): Promise<void>;
}
