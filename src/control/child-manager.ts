/**
 * Nodes whose children can be added and removed at run time (quorum), as
 * `x-blockdev-change` needs. A driver opts in by implementing both methods;
 * the handler has already checked that the parent, the child name or the
 * new node exist and that the new node has no parent.
 */
import type { BlockNode } from '../block/node.js';

export interface ChildManager {
  /** Attaches `node` as a new child (quorum names it `children.N`). */
  addChild(node: BlockNode): void | Promise<void>;
  /** Detaches the child with this role name (`children.1`). */
  removeChild(childName: string): void | Promise<void>;
}

export function isChildManager(node: BlockNode): node is BlockNode & ChildManager {
  const candidate = node as Partial<ChildManager>;
  return typeof candidate.addChild === 'function' && typeof candidate.removeChild === 'function';
}
