/**
 * The allocation granularity a node reports, when it has one (qcow2 and
 * memory nodes expose `clusterSize`). Used where QEMU asks bdrv_get_info.
 */
import type { BlockNode } from '../block/node.js';

export function clusterSizeOf(node: BlockNode): number | undefined {
  const value = (node as unknown as { clusterSize?: unknown }).clusterSize;
  return typeof value === 'number' && Number.isInteger(value) && value > 0 ? value : undefined;
}

/** QEMU's block-copy default, and its floor when the target reports a cluster size. */
export const DEFAULT_COPY_CLUSTER = 64 * 1024;

/** block_copy_calculate_cluster_size for a target with a backing file: max(64 KiB, its cluster size). */
export function copyClusterSizeFor(target: BlockNode): number {
  return Math.max(DEFAULT_COPY_CLUSTER, clusterSizeOf(target) ?? 0);
}
