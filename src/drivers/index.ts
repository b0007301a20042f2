/**
 * The drivers colo-blk knows. A graph made by `createGraph` can open any of
 * them from blockdev options.
 */
import { BlockGraph, type DriverDefinition } from '../block/graph.js';
import { replicationDriver } from '../replication/driver.js';
import { faultDriver } from './fault.js';
import { fileDriver } from './file.js';
import { memoryDriver } from './memory.js';
import { nbdDriver } from './nbd.js';
import { qcow2Driver } from './qcow2/index.js';
import { quorumDriver } from './quorum.js';
import { rawDriver } from './raw.js';

export const builtinDrivers: readonly DriverDefinition[] = [
  fileDriver,
  rawDriver,
  memoryDriver,
  qcow2Driver,
  nbdDriver,
  replicationDriver,
  quorumDriver,
  faultDriver,
];

export function createGraph(): BlockGraph {
  return new BlockGraph(builtinDrivers);
}
