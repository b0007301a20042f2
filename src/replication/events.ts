/**
 * Events of the replication machinery of one graph. The QMP layer forwards
 * them: quorum's as QUORUM_REPORT_BAD / QUORUM_FAILURE (same fields as
 * QEMU's), the rest as colo-blk's own events.
 */
import type { JobStatus, JobType } from '../jobs/job.js';
import type { LatchedError, ReplicationMode, Stage } from './stage.js';

/** QEMU's QUORUM_REPORT_BAD data. */
export interface QuorumReportBad {
  type: 'read' | 'write' | 'flush';
  /** strerror text; absent when the child returned data that lost the vote. */
  error?: string;
  'node-name': string;
  'sector-num': number;
  'sectors-count': number;
}

/** QEMU's QUORUM_FAILURE data. */
export interface QuorumFailure {
  reference: string;
  'sector-num': number;
  'sectors-count': number;
}

export interface ReplicationEvents {
  stage: { node: string; mode: ReplicationMode; from: Stage; to: Stage };
  /** A node latched an error (the first one since it was last cleared). */
  'error-latched': { node: string; mode: ReplicationMode; error: LatchedError };
  checkpoint: { node: string; durationUs: number };
  'job-status': { id: string; type: JobType; status: JobStatus; internal: boolean };
  'job-progress': { id: string; type: JobType; current: number; total: number; internal: boolean };
  'job-completed': {
    id: string;
    type: JobType;
    ok: boolean;
    cancelled: boolean;
    error?: string;
    len: number;
    offset: number;
    internal: boolean;
  };
  'quorum-report-bad': QuorumReportBad;
  'quorum-failure': QuorumFailure;
}
