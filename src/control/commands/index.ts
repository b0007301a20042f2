/**
 * Builds the command registry from whatever the daemon has: the graph is
 * always there; export, replication and job commands exist only when their
 * engine is given, as a QEMU built without a feature lacks its commands.
 */
import type { BlockGraph } from '../../block/graph.js';
import type { ExportControl } from '../export-control.js';
import type { JobControl } from '../job-control.js';
import { CommandRegistry } from '../registry.js';
import type { ReplicationControl } from '../replication-control.js';
import type { RunStateControl } from '../run-state-control.js';
import { versionInfo, type VersionInfo } from '../version.js';
import { blockCommands } from './block.js';
import { coreCommands } from './core.js';
import { exportCommands } from './export.js';
import { graphDebugCommands } from './graph-debug.js';
import { jobCommands } from './jobs.js';
import { replicationCommands } from './replication.js';
import { runStateCommands, type DatalessEventSink } from './run-state.js';

export interface ControlDeps {
  graph: BlockGraph;
  exports?: ExportControl;
  replication?: ReplicationControl;
  jobs?: JobControl;
  /** Makes `stop`, `cont` and `query-status` available. */
  runState?: RunStateControl;
  /** Where run-state events (STOP, RESUME) go. */
  events?: DatalessEventSink;
  /** Makes `quit` available; called after its reply is sent. */
  onQuit?: () => void;
  version?: VersionInfo;
}

export function buildRegistry(deps: ControlDeps): CommandRegistry {
  const registry = new CommandRegistry();
  const core: Parameters<typeof coreCommands>[0] = { commands: () => registry.list(), version: deps.version ?? versionInfo() };
  if (deps.onQuit) core.onQuit = deps.onQuit;
  registry.add(...coreCommands(core));
  registry.add(...blockCommands({ graph: deps.graph }));
  registry.add(...graphDebugCommands({ graph: deps.graph }));
  if (deps.exports) registry.add(...exportCommands({ graph: deps.graph, exports: deps.exports }));
  if (deps.jobs) registry.add(...jobCommands({ jobs: deps.jobs }));
  if (deps.replication) registry.add(...replicationCommands({ replication: deps.replication }));
  if (deps.runState) registry.add(...runStateCommands(deps.events ? { runState: deps.runState, events: deps.events } : { runState: deps.runState }));
  return registry;
}
