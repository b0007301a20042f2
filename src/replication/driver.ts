/**
 * The `replication` driver: QEMU's open-time checks in QEMU's order. Nothing
 * about the topology is checked here (a secondary opens with a top-id that
 * does not exist yet); `start` does that.
 */
import { BlockError } from '../block/errors.js';
import type { DriverDefinition, OpenContext } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { DEFAULT_FORWARD_WINDOW } from './forward-window.js';
import { ReplicationNode } from './node.js';

export const replicationDriver: DriverDefinition = {
  name: 'replication',
  kind: 'format',
  async open(ctx: OpenContext): Promise<BlockNode> {
    const file = await ctx.openChild('file');
    if (!file) throw new BlockError('EINVAL', 'A block device must be specified for "file"');
    // Both options are absorbed before either is judged, as qemu_opts_absorb_qdict does.
    const mode = ctx.options.optString('mode');
    const topId = ctx.options.optString('top-id');
    if (mode === undefined) throw new BlockError('EINVAL', 'Missing the option mode');
    const window = ctx.options.optInt('x-forward-window', 0, 1 << 30);
    if (mode === 'primary') {
      if (topId !== undefined) throw new BlockError('EINVAL', 'The primary side does not support option top-id');
      const limits = window === undefined ? DEFAULT_FORWARD_WINDOW : { ...DEFAULT_FORWARD_WINDOW, maxBytes: window };
      return new ReplicationNode(ctx.graph, ctx.nodeName, ctx.readOnly, file, 'primary', null, limits);
    }
    if (mode === 'secondary') {
      if (window !== undefined) throw new BlockError('EINVAL', 'The secondary side does not support option x-forward-window');
      if (topId === undefined) throw new BlockError('EINVAL', 'Missing the option top-id');
      return new ReplicationNode(ctx.graph, ctx.nodeName, ctx.readOnly, file, 'secondary', topId);
    }
    throw new BlockError('EINVAL', "The option mode's value should be primary or secondary");
  },
};
