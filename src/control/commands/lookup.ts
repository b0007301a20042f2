/**
 * Node lookup as QEMU's QMP does it: every node has a name, either given by
 * the user or generated (`#block123`), and commands accept both.
 */
import type { BlockGraph } from '../../block/graph.js';
import type { BlockNode } from '../../block/node.js';

export function findNode(graph: BlockGraph, name: string): BlockNode | undefined {
  return graph.lookup(name) ?? (name.startsWith('#') ? graph.allNodes().find((n) => n.nodeName === name) : undefined);
}
