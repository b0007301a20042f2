/**
 * Queries over a backing chain: the status of a range seen from the top of a
 * chain, the depth of the layer that supplies it, and QEMU's
 * `bdrv_is_allocated_above`, which the replication engine and the commit job
 * depend on.
 */
import { BlockError } from './errors.js';
import { BlockNode, Status, type BlockStatus } from './node.js';

/** Follows filters down to the node that actually holds data. */
export function skipFilters(node: BlockNode | null): BlockNode | null {
  let n = node;
  while (n && n.isFilter) n = n.filtered;
  return n;
}

/** The next layer below `node` in a chain: its filtered child or its backing. */
export function belowInChain(node: BlockNode): BlockNode | null {
  return node.isFilter ? node.filtered : node.backing;
}

export interface ChainStatus extends BlockStatus {
  /**
   * 1-based depth of the layer that supplies the range (filters not counted):
   * 1 = the top format layer. 0 = no layer above `base` has it.
   */
  depth: number;
  /** The layer that supplies the range, or null when none does. */
  layer: BlockNode | null;
}

/**
 * Status of [offset, offset+length) seen from `top`, walking down until a layer
 * has the range allocated. Walks no further than `base` (exclusive); with
 * `base` null the whole chain is searched. Ranges past the end of a shorter
 * backing image read as zeroes. The returned length is the longest prefix on
 * which the answer is the same.
 */
export async function blockStatusAbove(
  top: BlockNode,
  base: BlockNode | null,
  offset: number,
  length: number,
): Promise<ChainStatus> {
  let depth = 0;
  let want = length;
  for (let layer: BlockNode | null = top; layer && layer !== base; layer = belowInChain(layer)) {
    if (layer.isFilter) continue;
    depth++;
    if (offset >= layer.size) {
      // Past the end of a shorter backing file: zeroes, and nothing below matters.
      return { length: want, flags: Status.ZERO | Status.ALLOCATED, offset: -1, depth, layer };
    }
    const st = await layer.blockStatus(offset, Math.min(want, layer.size - offset));
    if (st.flags & Status.ALLOCATED) {
      return { ...st, length: Math.min(st.length, want), depth, layer };
    }
    // Unallocated here: the answer holds only as far as this layer's run does.
    want = Math.min(want, st.length);
  }
  // Nothing above base has it. Without a base that means zeroes.
  const flags = base === null ? Status.ZERO : 0;
  return { length: want, flags, offset: -1, depth: 0, layer: null };
}

export interface AllocatedAbove {
  allocated: boolean;
  /** Bytes from `offset` for which `allocated` holds. */
  length: number;
}

/**
 * Whether [offset, ...) is allocated in some layer from `top` down to, but not
 * including, `base` (with `includeBase`, `base` counts too). Returns the
 * length of the uniform run, as QEMU's `bdrv_is_allocated_above` does.
 */
export async function isAllocatedAbove(
  top: BlockNode,
  base: BlockNode | null,
  offset: number,
  length: number,
  options: { includeBase?: boolean } = {},
): Promise<AllocatedAbove> {
  if (length <= 0) throw new BlockError('EINVAL', 'isAllocatedAbove needs a non-empty range');
  const stop = options.includeBase && base ? belowInChain(base) : base;
  if (base && !chainContains(top, base)) {
    throw new BlockError('EINVAL', `${base.nodeName} is not in the backing chain of ${top.nodeName}`);
  }
  let want = length;
  for (let layer: BlockNode | null = top; layer && layer !== stop; layer = belowInChain(layer)) {
    if (layer.isFilter) continue;
    if (offset >= layer.size) {
      // A shorter layer reads zeroes past its end; that counts as allocated there.
      return { allocated: true, length: want };
    }
    const st = await layer.blockStatus(offset, Math.min(want, layer.size - offset));
    if (st.flags & Status.ALLOCATED) return { allocated: true, length: Math.min(st.length, want) };
    want = Math.min(want, st.length);
  }
  return { allocated: false, length: want };
}

/** Whether `node` is `top` or lies below it in its chain of filters and backings. */
export function chainContains(top: BlockNode, node: BlockNode): boolean {
  for (let n: BlockNode | null = top; n; n = belowInChain(n)) if (n === node) return true;
  return false;
}

/** Whether `node` can be reached from `root` through any children (the root itself counts). */
export function reaches(root: BlockNode, node: BlockNode, seen = new Set<BlockNode>()): boolean {
  if (root === node) return true;
  if (seen.has(root)) return false;
  seen.add(root);
  for (const ref of root.children.values()) if (reaches(ref.node, node, seen)) return true;
  return false;
}
