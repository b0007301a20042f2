/**
 * Block replication commands: QEMU's Xen-style trio (xen-set-replication,
 * query-xen-replication-status, xen-colo-do-checkpoint), which a COLO pair
 * or an HA manager drives, and colo-blk's x-colo-blk-query-replication,
 * which says what QEMU's single error bit hides: the stage, which disk
 * failed doing what, how much is buffered, how far a failover commit got.
 */
import { QmpError } from '../errors.js';
import { command, type Command } from '../registry.js';
import { errnoNumber, type ReplicationControl, type ReplicationNodeStatus } from '../replication-control.js';
import { bool, enumOf, int, listOf, str, struct } from '../schema.js';

export interface ReplicationDeps {
  replication: ReplicationControl;
}

const replicationStatus = struct('ReplicationStatus', { error: bool, '*desc': str });

const replicationInfo = struct('ColoBlkReplicationInfo', {
  'node-name': str,
  mode: enumOf('ReplicationMode', ['primary', 'secondary']),
  stage: enumOf('ColoBlkReplicationStage', ['none', 'running', 'failover', 'failover-failed', 'done']),
  '*top-id': str,
  errors: listOf(struct('ColoBlkReplicationError', {
    disk: str,
    role: enumOf('ColoBlkReplicationDiskRole', ['nbd', 'active', 'hidden', 'secondary']),
    operation: str,
    errno: int,
    'errno-name': str,
    desc: str,
  })),
  '*active-bytes': int,
  '*hidden-bytes': int,
  checkpoints: int,
  '*last-checkpoint-us': int,
  '*commit': struct('ColoBlkCommitProgress', {
    status: enumOf('ColoBlkCommitStatus', ['running', 'completed', 'failed']),
    offset: int,
    len: int,
    '*error': str,
  }),
});

/** The wire form of one node's status (QAPI member names). */
export function replicationInfoToWire(s: ReplicationNodeStatus): Record<string, unknown> {
  return {
    'node-name': s.nodeName,
    mode: s.mode,
    stage: s.stage,
    'top-id': s.topId,
    errors: s.errors.map((e) => ({
      disk: e.disk,
      role: e.role,
      operation: e.operation,
      errno: errnoNumber(e.errno),
      'errno-name': e.errno,
      desc: e.desc,
    })),
    'active-bytes': s.activeBytes,
    'hidden-bytes': s.hiddenBytes,
    checkpoints: s.checkpoints,
    'last-checkpoint-us': s.lastCheckpointUs,
    commit: s.commit && {
      status: s.commit.status,
      offset: s.commit.offset,
      len: s.commit.len,
      error: s.commit.error,
    },
  };
}

export function replicationCommands({ replication }: ReplicationDeps): Command[] {
  return [
    command({
      name: 'xen-set-replication',
      args: struct('q_obj_xen-set-replication-arg', { enable: bool, primary: bool, '*failover': bool }),
      async handler(args, ctx) {
        if (args.enable && args.failover !== undefined) {
          throw QmpError.generic("Parameter 'failover' is only for stopping replication");
        }
        if (args.enable) {
          await replication.start(args.primary ? 'primary' : 'secondary');
          return;
        }
        const failover = args.failover ?? false;
        if (!failover) {
          await replication.stop(false);
          return;
        }
        // QEMU discards every error of a failover stop; keep them in the log at least.
        try {
          await replication.stop(true);
        } catch (err) {
          ctx.log.warn('replication.failover_error_ignored', { error: err });
        }
      },
    }),
    command({
      name: 'query-xen-replication-status',
      returns: replicationStatus,
      async handler() {
        try {
          await replication.checkError();
          return { error: false };
        } catch (err) {
          return { error: true, desc: QmpError.from(err).desc };
        }
      },
    }),
    command({
      name: 'xen-colo-do-checkpoint',
      handler: () => replication.checkpoint(),
    }),
    command({
      name: 'x-colo-blk-query-replication',
      returns: listOf(replicationInfo),
      features: ['unstable'],
      handler: () => replication.query().map(replicationInfoToWire),
    }),
  ];
}
