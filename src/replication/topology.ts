/**
 * The secondary's disks as `start` finds them (QEMU's checks, in QEMU's
 * order), the top-id lookup, and make-empty with QEMU's messages.
 */
import type { BlockGraph } from '../block/graph.js';
import { BlockNode, Status } from '../block/node.js';
import { Errors, makeEmptyError } from './errors.js';

export interface SecondaryChain {
  active: BlockNode;
  hidden: BlockNode;
  secondary: BlockNode;
}

/** active = file, hidden = its backing, secondary disk = hidden's backing; each check's message in order. */
export function checkChain(node: BlockNode): SecondaryChain {
  const active = node.file;
  if (!active || !active.backing) throw Errors.noActiveBacking();
  const hidden = active.backing;
  if (!hidden.backing) throw Errors.noHiddenBacking();
  const secondary = hidden.backing;
  // The disk the primary writes to must be reachable from outside (an NBD export, a device).
  if (secondary.backends.length === 0) throw Errors.noBlockBackend();
  if (active.size !== hidden.size || hidden.size !== secondary.size) throw Errors.lengthMismatch();
  if (!supportsMakeEmpty(active) || !supportsMakeEmpty(hidden)) throw Errors.noMakeEmpty();
  return { active, hidden, secondary };
}

/** bdrv_lookup_bs: a device (BlockBackend) name first, then a node name. */
export function findTop(graph: BlockGraph, id: string): BlockNode | null {
  for (const node of graph.allNodes()) {
    for (const backend of node.backends) if (backend.name === id) return node;
  }
  return graph.lookup(id) ?? null;
}

/** Whether the node's driver implements make-empty (QEMU checks drv->bdrv_make_empty). */
export function supportsMakeEmpty(node: BlockNode): boolean {
  const method = (n: object): unknown => (n as Record<string, unknown>).doMakeEmpty;
  return method(node) !== method(BlockNode.prototype);
}

/**
 * bdrv_make_empty with its error messages. A layer with nothing allocated is
 * left alone: emptying it would change nothing a reader can see, and on qcow2
 * it still rewrites metadata (about a millisecond per image). The caller
 * quiesces the layer's users, so the probe cannot race a write.
 */
export async function emptyDisk(disk: BlockNode): Promise<void> {
  try {
    if (!(await holdsData(disk))) return;
  } catch {
    // A layer that cannot say what it holds is emptied anyway.
  }
  try {
    await disk.makeEmpty();
  } catch (err) {
    throw makeEmptyError(disk, err);
  }
}

/** Whether any range of this layer (alone, not its backing) is allocated. */
async function holdsData(disk: BlockNode): Promise<boolean> {
  for (let offset = 0; offset < disk.size;) {
    const st = await disk.blockStatus(offset, disk.size - offset);
    if (st.flags & Status.ALLOCATED) return true;
    offset += st.length;
  }
  return false;
}
