/**
 * Changing a node between read-only and read-write in place (QEMU's
 * bdrv_reopen_set_read_only). Replication needs it: an inline backing file
 * opens read-only, and `start` reopens the hidden and secondary disks
 * read-write, then puts them back when the backup job ends; an active commit
 * does the same for its base. A driver offers it by implementing `reopen`.
 */
import { BlockError } from '../block/errors.js';
import type { BlockNode } from '../block/node.js';

export interface Reopenable {
  /** Reopens the node with `readOnly`; on failure the node is unchanged. */
  reopen(options: { readOnly: boolean }): Promise<void>;
}

export function canReopen(node: BlockNode): node is BlockNode & Reopenable {
  return typeof (node as Partial<Reopenable>).reopen === 'function';
}

/** Makes `node` read-only or read-write; a no-op when it already is. */
export async function setReadOnly(node: BlockNode, readOnly: boolean): Promise<void> {
  if (node.readOnly === readOnly) return;
  if (!canReopen(node)) {
    throw new BlockError('ENOTSUP', `Block node '${node.nodeName}' is ${readOnly ? 'read-write' : 'read-only'} and its driver (${node.driver}) cannot reopen it ${readOnly ? 'read-only' : 'read-write'}`);
  }
  await node.reopen({ readOnly });
}
