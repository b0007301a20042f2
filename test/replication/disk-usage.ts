/** Bytes a layer holds itself, by walking its block status (to check the engine's counters). */
import { Status, type BlockNode } from '../../src/block/node.js';

export async function allocatedBytes(node: BlockNode): Promise<number> {
  let total = 0;
  for (let offset = 0; offset < node.size;) {
    const st = await node.blockStatus(offset, node.size - offset);
    if (st.flags & Status.ALLOCATED) total += st.length;
    offset += st.length;
  }
  return total;
}
