/**
 * The QMP control plane, as the daemon uses it:
 *
 *   const events = new EventHub();                       // give it to the engines
 *   const qmp = new QmpServer({ registry: buildRegistry({ graph, exports, replication, jobs, onQuit }), events });
 *   await qmp.listen(parseQmpAddress('unix:/run/colo-blk.qmp,server=on,wait=off'));
 *   ...
 *   await qmp.close();
 *
 * and clients use QmpClient. See docs/qmp.md for the commands and events.
 */
export { parseQmpAddress, type QmpSocketAddress } from './address.js';
export { isChildManager, type ChildManager } from './child-manager.js';
export { buildRegistry, type ControlDeps } from './commands/index.js';
export { QmpError, type QmpErrorClass } from './errors.js';
export { EventHub, type QmpEvent, type QmpEventMap, type QmpEventName, type QmpEventSink } from './events.js';
export type { BlockExportInfo, ExportControl, NbdExportConfig, NbdServerConfig, SocketAddress } from './export-control.js';
export type { JobControl, JobInfo, JobStatus, JobType } from './job-control.js';
export { QmpClient, QmpTransportError, type QmpClientOptions } from './qmp-client.js';
export { command, CommandRegistry, type Command, type CommandContext } from './registry.js';
export {
  errnoNumber, replicationErrorEvent,
  type ReplicationControl, type ReplicationErrorInfo, type ReplicationMode, type ReplicationNodeStatus, type ReplicationStage,
} from './replication-control.js';
export { QmpServer, type QmpListenAddress, type QmpServerOptions } from './server.js';
export { versionInfo, type VersionInfo } from './version.js';
