/** The replication engine's public surface. */
export { replicationDriver } from './driver.js';
export { ReplicationError, type ReplicationErrorCode } from './errors.js';
export type { QuorumFailure, QuorumReportBad, ReplicationEvents } from './events.js';
export { ReplicationNode } from './node.js';
export { replicationRegistry, ReplicationRegistry, type SetReplicationArgs, type XenReplicationStatus } from './registry.js';
export type { DiskRole, FailedOperation, LatchedError, ReplicationMode, Stage } from './stage.js';
export type { ReplicationErrorStatus, ReplicationNodeStatus } from './status.js';
export { forwardEvents, jobControl, replicationControl } from './qmp.js';
