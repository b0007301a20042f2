/**
 * `x-debug-query-block-graph`: every node and BlockBackend and the edges
 * between them, as QEMU's XDbgBlockGraph. It shows graph changes that
 * queries by name cannot: a copy-before-write filter appearing above the
 * secondary disk, an active commit swapping the replication node's `file`.
 * colo-blk does not model QEMU's permissions, so `perm` and `shared-perm`
 * are empty.
 */
import type { BlockGraph } from '../../block/graph.js';
import { BlockNode, type BlockBackendLike } from '../../block/node.js';
import { command, type Command } from '../registry.js';
import { enumOf, int, listOf, str, struct } from '../schema.js';

const permission = enumOf('BlockPermission', ['consistent-read', 'write', 'write-unchanged', 'resize']);

const blockGraphInfo = struct('XDbgBlockGraph', {
  nodes: listOf(struct('XDbgBlockGraphNode', {
    id: int,
    type: enumOf('XDbgBlockGraphNodeType', ['block-backend', 'block-job', 'block-driver']),
    name: str,
  })),
  edges: listOf(struct('XDbgBlockGraphEdge', {
    parent: int,
    child: int,
    name: str,
    perm: listOf(permission),
    'shared-perm': listOf(permission),
  })),
});

export function graphDebugCommands({ graph }: { graph: BlockGraph }): Command[] {
  return [
    command({
      name: 'x-debug-query-block-graph',
      returns: blockGraphInfo,
      features: ['unstable'],
      handler() {
        const ids = new Map<BlockNode | BlockBackendLike, number>();
        const nodes: Array<{ id: number; type: 'block-backend' | 'block-driver'; name: string }> = [];
        const idOf = (v: BlockNode | BlockBackendLike): number => {
          let id = ids.get(v);
          if (id === undefined) {
            id = ids.size + 1;
            ids.set(v, id);
            nodes.push(v instanceof BlockNode
              ? { id, type: 'block-driver', name: v.nodeName }
              : { id, type: 'block-backend', name: v.name });
          }
          return id;
        };
        const edges: Array<{ parent: number; child: number; name: string; perm: string[]; 'shared-perm': string[] }> = [];
        for (const node of graph.allNodes()) {
          idOf(node);
          for (const ref of node.parents) {
            edges.push({ parent: idOf(ref.parent), child: idOf(node), name: ref.role, perm: [], 'shared-perm': [] });
          }
        }
        return { nodes, edges };
      },
    }),
  ];
}
