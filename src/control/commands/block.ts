/**
 * Commands on the block graph: blockdev-add/-del, query-named-block-nodes,
 * x-blockdev-change. The graph validates blockdev options itself; these
 * handlers add the checks QEMU's QMP layer makes before reaching it, with
 * its messages.
 */
import * as fs from 'node:fs';
import type { BlockGraph } from '../../block/graph.js';
import type { BlockNode } from '../../block/node.js';
import type { OptionDict, OptionValue } from '../../block/options.js';
import { isChildManager } from '../child-manager.js';
import { QmpError } from '../errors.js';
import { isQmpObject, QmpFloat, type QmpValue } from '../json-value.js';
import { command, type Command } from '../registry.js';
import { findNode } from './lookup.js';
import { any, bool, custom, int, listOf, str, struct } from '../schema.js';
import type { Visit } from '../validate.js';

export interface BlockDeps {
  graph: BlockGraph;
}

/**
 * Opaque to the schema: the graph's drivers check their own options. (Typed
 * loosely here because the recursive OptionDict defeats generic inference.)
 */
interface BlockdevOptions {
  readonly [key: string]: unknown;
}

const blockdevOptions = custom(
  'BlockdevOptions',
  struct('BlockdevOptions', {
    driver: str,
    '*node-name': str,
    '*discard': str,
    '*cache': any,
    '*read-only': bool,
    '*auto-read-only': bool,
    '*force-share': bool,
    '*detect-zeroes': str,
  }),
  (value: QmpValue, at: Visit): BlockdevOptions => {
    if (!isQmpObject(value)) throw at.typeError('object');
    return toOptionValue(value, at) as BlockdevOptions;
  },
);

/** Arguments as the block layer's option type: floats become numbers, integers must be exact. */
function toOptionValue(v: QmpValue, at: Visit): OptionValue {
  if (v instanceof QmpFloat) return v.value;
  if (typeof v === 'bigint') {
    const n = Number(v);
    if (!Number.isSafeInteger(n)) throw at.fail(`Parameter '${at.fullName}' is out of range (larger than 2^53)`);
    return n;
  }
  if (Array.isArray(v)) return v.map((e, i) => toOptionValue(e, at.element(i)));
  if (isQmpObject(v)) {
    const out: OptionDict = {};
    for (const k of Object.keys(v)) {
      Object.defineProperty(out, k, { value: toOptionValue(v[k]!, at.member(k)), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return v;
}

const imageInfoMembers = {
  filename: str,
  format: str,
  '*dirty-flag': bool,
  '*actual-size': int,
  'virtual-size': int,
  '*cluster-size': int,
  '*encrypted': bool,
  '*compressed': bool,
  '*backing-filename': str,
  '*full-backing-filename': str,
  '*backing-filename-format': str,
  '*format-specific': any,
} as const;

const blockDeviceInfo = struct('BlockDeviceInfo', {
  file: str,
  '*node-name': str,
  ro: bool,
  drv: str,
  '*backing_file': str,
  backing_file_depth: int,
  encrypted: bool,
  detect_zeroes: str,
  bps: int,
  bps_rd: int,
  bps_wr: int,
  iops: int,
  iops_rd: int,
  iops_wr: int,
  image: struct('ImageInfo', imageInfoMembers),
  cache: struct('BlockdevCacheInfo', { writeback: bool, direct: bool, 'no-flush': bool }),
  write_threshold: int,
});

export function blockCommands({ graph }: BlockDeps): Command[] {
  return [
    command({
      name: 'blockdev-add',
      args: blockdevOptions,
      async handler(opts) {
        const driver = opts.driver;
        if (driver === undefined) throw QmpError.generic("Parameter 'driver' is missing");
        if (typeof driver !== 'string') throw QmpError.generic("Invalid parameter type for 'driver', expected: string");
        if (!graph.hasDriver(driver)) throw QmpError.generic(`Parameter 'driver' does not accept value '${driver}'`);
        const nodeName = opts['node-name'];
        if (nodeName !== undefined && typeof nodeName !== 'string') {
          throw QmpError.generic("Invalid parameter type for 'node-name', expected: string");
        }
        if (nodeName === undefined) throw QmpError.generic("'node-name' must be specified for the root node");
        await graph.add(opts as OptionDict);
      },
    }),
    command({
      name: 'blockdev-del',
      args: struct('q_obj_blockdev-del-arg', { 'node-name': str }),
      async handler(args) {
        const name = args['node-name'];
        const node = findNode(graph, name);
        if (!node) throw QmpError.generic(`Failed to find node with node-name='${name}'`);
        if (node.backends.length > 0) throw QmpError.generic(`Node ${name} is in use`);
        if (!graph.isMonitorOwned(node)) throw QmpError.generic(`Node ${name} is not owned by the monitor`);
        if (node.parents.size > 0) throw QmpError.generic(`Block device ${name} is in use`);
        await graph.delete(name);
      },
    }),
    command({
      name: 'query-named-block-nodes',
      args: struct('q_obj_query-named-block-nodes-arg', { '*flat': bool }),
      returns: listOf(blockDeviceInfo),
      handler: (args) => orderedNodes(graph).map((n) => describeNode(n, args.flat ?? false)),
    }),
    command({
      name: 'x-blockdev-change',
      args: struct('q_obj_x-blockdev-change-arg', { parent: str, '*child': str, '*node': str }),
      features: ['unstable'],
      async handler(args) {
        const parent = findNode(graph, args.parent);
        if (!parent) throw QmpError.generic(`Cannot find device='${args.parent}' nor node-name='${args.parent}'`);
        if ((args.child === undefined) === (args.node === undefined)) {
          throw QmpError.generic(args.child !== undefined
            ? 'The parameters child and node are in conflict'
            : 'Either child or node must be specified');
        }
        if (args.child !== undefined) {
          if (!parent.children.has(args.child)) {
            throw QmpError.generic(`Node '${args.parent}' does not have child '${args.child}'`);
          }
          if (!isChildManager(parent)) throw QmpError.generic(`The node ${parent.nodeName} does not support removing a child`);
          await parent.removeChild(args.child);
          return;
        }
        const child = findNode(graph, args.node!);
        if (!child) throw QmpError.generic(`Node '${args.node}' not found`);
        if (!isChildManager(parent)) throw QmpError.generic(`The node ${parent.nodeName} does not support adding a child`);
        if (child.parents.size > 0) throw QmpError.generic(`The node ${child.nodeName} already has a parent`);
        await parent.addChild(child);
      },
    }),
  ];
}

/** Parents before their children, roots in creation order (QEMU lists nodes as it names them). */
function orderedNodes(graph: BlockGraph): BlockNode[] {
  const all = graph.allNodes();
  const seen = new Set<BlockNode>();
  const out: BlockNode[] = [];
  const visit = (n: BlockNode): void => {
    if (seen.has(n) || !all.includes(n)) return;
    seen.add(n);
    out.push(n);
    for (const ref of n.children.values()) visit(ref.node);
  };
  for (const n of all) if (n.nodeParents.length === 0) visit(n);
  for (const n of all) visit(n);
  return out;
}

/**
 * BlockDeviceInfo as QEMU builds it (bdrv_block_device_info): the node's
 * own description, I/O limits (colo-blk has none), and unless `flat` the
 * chain of images below it in `image.backing-image`. Like QEMU, only the
 * non-flat form counts `backing_file_depth`.
 */
export function describeNode(node: BlockNode, flat: boolean): Record<string, unknown> {
  const info = node.info();
  let depth = 0;
  const image = imageInfo(node);
  if (!flat) {
    let level = image;
    for (let below = next(node); below; below = next(below)) {
      depth++;
      const sub = imageInfo(below);
      level['backing-image'] = sub;
      level = sub;
    }
  }
  const out: Record<string, unknown> = {
    file: info.file,
    'node-name': info['node-name'],
    ro: info.ro,
    drv: info.drv,
    backing_file: info.backing_file,
    backing_file_depth: depth,
    encrypted: info.encrypted ?? false,
    detect_zeroes: info.detect_zeroes ?? 'off',
    bps: 0,
    bps_rd: 0,
    bps_wr: 0,
    iops: 0,
    iops_rd: 0,
    iops_wr: 0,
    image,
    cache: info.cache ?? { writeback: true, direct: false, 'no-flush': false },
    write_threshold: 0,
  };
  for (const k of ['dirty-bitmaps']) if (info[k] !== undefined) out[k] = info[k];
  return out;
}

/** The node below in the chain QEMU walks: a filter's child, else the backing image. */
function next(node: BlockNode): BlockNode | null {
  return node.filtered ?? node.backing;
}

function imageInfo(node: BlockNode): Record<string, unknown> {
  const image: Record<string, unknown> = { ...node.info().image };
  if (image['actual-size'] === undefined) {
    const size = allocatedFileSize(node);
    if (size !== undefined) image['actual-size'] = size;
  }
  return image;
}

/**
 * Host bytes allocated for the node (QEMU's bdrv_get_allocated_file_size):
 * a file node's allocated blocks, else what its `file` child holds.
 */
function allocatedFileSize(node: BlockNode): number | undefined {
  if (node.driver === 'file') {
    try {
      return fs.statSync(node.filename).blocks * 512;
    } catch {
      return undefined;
    }
  }
  const file = node.file;
  return file ? allocatedFileSize(file) : undefined;
}

