/**
 * Asynchronous events: their names and data (QEMU's where QEMU has one,
 * `COLO_BLK_*` for colo-blk's own), and the hub that stamps them and hands
 * them to the QMP server. Components get a `QmpEventSink` and call
 * `emit('BLOCK_JOB_COMPLETED', {...})`; the data types come from the specs
 * below, which also describe the events in `query-qmp-schema`.
 */
import { Logger, rootLogger } from '../util/log.js';
import { JOB_STATUSES, JOB_TYPES } from './job-control.js';
import { bool, enumOf, int, str, struct, type Infer } from './schema.js';

const jobType = enumOf('JobType', JOB_TYPES);
const jobStatus = enumOf('JobStatus', JOB_STATUSES);
const replicationMode = enumOf('ReplicationMode', ['primary', 'secondary']);
const replicationStage = enumOf('ColoBlkReplicationStage', ['none', 'running', 'failover', 'failover-failed', 'done']);

export const EVENT_SPECS = {
  BLOCK_EXPORT_DELETED: struct('BLOCK_EXPORT_DELETED_ARG', { id: str }),
  JOB_STATUS_CHANGE: struct('JOB_STATUS_CHANGE_ARG', { id: str, status: jobStatus }),
  BLOCK_JOB_COMPLETED: struct('BLOCK_JOB_COMPLETED_ARG', {
    type: jobType, device: str, len: int, offset: int, speed: int, '*error': str,
  }),
  BLOCK_JOB_CANCELLED: struct('BLOCK_JOB_CANCELLED_ARG', { type: jobType, device: str, len: int, offset: int, speed: int }),
  BLOCK_JOB_READY: struct('BLOCK_JOB_READY_ARG', { type: jobType, device: str, len: int, offset: int, speed: int }),
  BLOCK_JOB_PENDING: struct('BLOCK_JOB_PENDING_ARG', { type: jobType, id: str }),
  BLOCK_JOB_ERROR: struct('BLOCK_JOB_ERROR_ARG', {
    device: str,
    operation: enumOf('IoOperationType', ['read', 'write']),
    action: enumOf('BlockErrorAction', ['ignore', 'report', 'stop']),
  }),
  QUORUM_FAILURE: struct('QUORUM_FAILURE_ARG', { reference: str, 'sector-num': int, 'sectors-count': int }),
  QUORUM_REPORT_BAD: struct('QUORUM_REPORT_BAD_ARG', {
    type: enumOf('QuorumOpType', ['read', 'write', 'flush']),
    '*error': str,
    'node-name': str,
    'sector-num': int,
    'sectors-count': int,
  }),
  /** A replication node changed stage. */
  COLO_BLK_REPLICATION_STAGE: struct('COLO_BLK_REPLICATION_STAGE_ARG', {
    'node-name': str,
    mode: replicationMode,
    stage: replicationStage,
    previous: replicationStage,
  }),
  /**
   * Progress of a job (a failover commit, a resync), at most once a second
   * per job: QEMU has no such event, so its clients poll query-jobs.
   */
  COLO_BLK_JOB_PROGRESS: struct('COLO_BLK_JOB_PROGRESS_ARG', {
    id: str,
    type: jobType,
    'current-progress': int,
    'total-progress': int,
  }),
  /**
   * A replication node latched an error (QEMU only sets a flag that
   * query-xen-replication-status reports as "I/O error occurred").
   */
  COLO_BLK_REPLICATION_ERROR: struct('COLO_BLK_REPLICATION_ERROR_ARG', {
    'node-name': str,
    mode: replicationMode,
    disk: str,
    role: enumOf('ColoBlkReplicationDiskRole', ['nbd', 'active', 'hidden', 'secondary']),
    operation: str,
    errno: int,
    'errno-name': str,
    desc: str,
    /** Whether the guest saw the error (secondary) or it was swallowed (primary). */
    'guest-visible': bool,
  }),
} as const;

export type QmpEventName = keyof typeof EVENT_SPECS;
export type QmpEventMap = { [K in QmpEventName]: Infer<(typeof EVENT_SPECS)[K]> };

export interface QmpEventSink {
  emit<K extends QmpEventName>(event: K, data: QmpEventMap[K]): void;
}

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

export interface QmpEvent {
  event: string;
  data?: unknown;
  timestamp: QmpTimestamp;
}

export type EventListener = (event: QmpEvent) => void;

/**
 * QEMU delivers these at most once a second per key: the first at once,
 * later ones within the second collapse into the last, sent when the
 * second is over (monitor_qapi_event_queue).
 */
const THROTTLE_MS: Partial<Record<QmpEventName, number>> = {
  QUORUM_REPORT_BAD: 1000,
  QUORUM_FAILURE: 1000,
  COLO_BLK_JOB_PROGRESS: 1000,
};

function throttleKey(event: QmpEventName, data: unknown): string {
  if (event === 'QUORUM_REPORT_BAD') return `${event}\0${(data as { 'node-name': string })['node-name']}`;
  if (event === 'COLO_BLK_JOB_PROGRESS') return `${event}\0${(data as { id: string }).id}`;
  return event;
}

/** How the hub schedules delayed events; tests substitute a manual clock. */
export interface EventTimers {
  set(fn: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

const realTimers: EventTimers = {
  set: (fn, ms) => setTimeout(fn, ms).unref(),
  clear: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

interface ThrottleState {
  pending: QmpEvent | null;
  rate: number;
  timer: unknown;
}

export function eventTimestamp(): QmpTimestamp {
  const us = Math.round((performance.timeOrigin + performance.now()) * 1000);
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}

export class EventHub implements QmpEventSink {
  private readonly listeners = new Set<EventListener>();
  private readonly throttled = new Map<string, ThrottleState>();
  private readonly log: Logger;
  private readonly timers: EventTimers;

  constructor(options: { log?: Logger; timers?: EventTimers } = {}) {
    this.log = options.log ?? rootLogger.child({ component: 'qmp-events' });
    this.timers = options.timers ?? realTimers;
  }

  /** Returns the function that unsubscribes. */
  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit<K extends QmpEventName>(event: K, data: QmpEventMap[K]): void {
    this.emitUnchecked(event, data);
  }

  /** For events outside the catalogue (tests, and components still being written). */
  emitUnchecked(event: string, data?: unknown): void {
    const ev: QmpEvent = data === undefined ? { event, timestamp: eventTimestamp() } : { event, data, timestamp: eventTimestamp() };
    const rate = THROTTLE_MS[event as QmpEventName];
    if (!rate) {
      this.deliver(ev);
      return;
    }
    const key = throttleKey(event as QmpEventName, data);
    const state = this.throttled.get(key);
    if (state) {
      state.pending = ev;
      return;
    }
    this.deliver(ev);
    this.arm(key, rate);
  }

  /** Drops throttled events not yet sent and their timers. */
  close(): void {
    for (const s of this.throttled.values()) this.timers.clear(s.timer);
    this.throttled.clear();
  }

  private arm(key: string, rate: number): void {
    const state: ThrottleState = { pending: null, rate, timer: this.timers.set(() => this.expire(key, state), rate) };
    this.throttled.set(key, state);
  }

  private expire(key: string, state: ThrottleState): void {
    const ev = state.pending;
    if (!ev) {
      this.throttled.delete(key);
      return;
    }
    state.pending = null;
    this.deliver(ev);
    state.timer = this.timers.set(() => this.expire(key, state), state.rate);
  }

  private deliver(ev: QmpEvent): void {
    this.log.debug('qmp.event', { qmpEvent: ev.event });
    for (const l of this.listeners) {
      try {
        l(ev);
      } catch (err) {
        this.log.error('qmp.event_listener_failed', { qmpEvent: ev.event, error: err });
      }
    }
  }
}

