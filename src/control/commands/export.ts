/**
 * NBD server and block export commands (qapi/block-export.json), checked in
 * QEMU 7.2's order with its messages, then handed to an ExportControl.
 */
import type { BlockGraph } from '../../block/graph.js';
import { QmpError } from '../errors.js';
import type { ExportControl, SocketAddress } from '../export-control.js';
import { isQmpObject, type QmpValue } from '../json-value.js';
import { command, type Command } from '../registry.js';
import { findNode } from './lookup.js';
import { alternate, bool, custom, enumOf, intOf, listOf, str, struct, uint32, union, type Infer } from '../schema.js';
import { validate, type Visit } from '../validate.js';

export interface ExportDeps {
  graph: BlockGraph;
  exports: ExportControl;
}

/** NBD_MAX_STRING_SIZE: the protocol's limit on names and descriptions. */
const NBD_MAX_STRING = 4096;

const inetSocketAddress = struct('InetSocketAddress', {
  host: str,
  port: str,
  '*numeric': bool,
  '*to': intOf('uint16'),
  '*ipv4': bool,
  '*ipv6': bool,
  '*keep-alive': bool,
  '*mptcp': bool,
});
const unixSocketAddress = struct('UnixSocketAddress', { path: str, '*abstract': bool, '*tight': bool });
const vsockSocketAddress = struct('VsockSocketAddress', { cid: str, port: str });
const fdSocketAddress = struct('String', { str });
const socketAddressType = enumOf('SocketAddressType', ['inet', 'unix', 'vsock', 'fd']);

/** What nbd-server-start takes in QEMU: each variant wrapped in `data`. */
const socketAddressLegacy = union('SocketAddressLegacy', { type: socketAddressType }, 'type', {
  inet: { data: inetSocketAddress },
  unix: { data: unixSocketAddress },
  vsock: { data: vsockSocketAddress },
  fd: { data: fdSocketAddress },
});

/** The flat form (qemu-storage-daemon's --nbd-server addr.*), accepted as an extension. */
const socketAddressFlat = union('SocketAddress', { type: socketAddressType }, 'type', {
  inet: inetSocketAddress.members,
  unix: unixSocketAddress.members,
  vsock: vsockSocketAddress.members,
  fd: fdSocketAddress.members,
});

type FlatAddress = Infer<typeof socketAddressFlat>;

/**
 * Both forms: an address with members besides `type` and `data` is the
 * flat form; anything else is checked as the legacy form, so that clients
 * written for QEMU get QEMU's messages.
 */
const nbdServerAddress = custom('SocketAddressLegacy', socketAddressLegacy, (value: QmpValue, at: Visit): SocketAddress => {
  const flat = isQmpObject(value) && Object.keys(value).some((k) => k !== 'type' && k !== 'data');
  if (flat) return fromFlat(validate(socketAddressFlat, value, at) as FlatAddress);
  const legacy = validate(socketAddressLegacy, value, at) as Infer<typeof socketAddressLegacy>;
  return fromFlat({ type: legacy.type, ...legacy.data } as FlatAddress);
});

function fromFlat(a: FlatAddress): SocketAddress {
  switch (a.type) {
    case 'inet': {
      const out: SocketAddress = { type: 'inet', host: a.host, port: a.port };
      if (a.numeric !== undefined) out.numeric = a.numeric;
      if (a.to !== undefined) out.to = a.to;
      if (a.ipv4 !== undefined) out.ipv4 = a.ipv4;
      if (a.ipv6 !== undefined) out.ipv6 = a.ipv6;
      if (a['keep-alive'] !== undefined) out.keepAlive = a['keep-alive'];
      if (a.mptcp !== undefined) out.mptcp = a.mptcp;
      return out;
    }
    case 'unix': {
      const out: SocketAddress = { type: 'unix', path: a.path };
      if (a.abstract !== undefined) out.abstract = a.abstract;
      if (a.tight !== undefined) out.tight = a.tight;
      return out;
    }
    case 'vsock': return { type: 'vsock', cid: a.cid, port: a.port };
    case 'fd': return { type: 'fd', str: a.str };
  }
}

const removeMode = enumOf('BlockExportRemoveMode', ['safe', 'hard']);

const bitmapRef = alternate('BlockDirtyBitmapOrStr', [
  str,
  struct('BlockDirtyBitmap', { node: str, name: str }),
]);

/** Only NBD is built in, as in a QEMU built without FUSE, vhost-user and VDUSE. */
const blockExportOptions = union('BlockExportOptions', {
  type: enumOf('BlockExportType', ['nbd']),
  id: str,
  '*fixed-iothread': bool,
  '*iothread': str,
  'node-name': str,
  '*writable': bool,
  '*writethrough': bool,
}, 'type', {
  nbd: {
    '*name': str,
    '*description': str,
    '*bitmaps': listOf(bitmapRef),
    '*allocation-depth': bool,
  },
});

const blockExportInfo = struct('BlockExportInfo', {
  id: str,
  type: enumOf('BlockExportType', ['nbd']),
  'node-name': str,
  'shutting-down': bool,
});

/** QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'. */
function wellFormedId(id: string): boolean {
  return /^[A-Za-z][A-Za-z0-9._-]*$/.test(id);
}

interface NewExport {
  id: string;
  nodeName: string;
  writable: boolean;
  writethrough?: boolean;
  iothread?: string;
  name?: string;
  description?: string;
  bitmaps?: Array<string | { node: string; name: string }>;
  allocationDepth?: boolean;
  /** How a missing node is reported: nbd-server-add names the device, block-export-add does not. */
  lookupMessage: string;
}

export function exportCommands({ graph, exports }: ExportDeps): Command[] {
  /** blk_exp_add() and nbd_export_create(), in QEMU's order. */
  async function addExport(e: NewExport): Promise<void> {
    if (!wellFormedId(e.id)) throw QmpError.generic('Invalid block export id');
    if (exports.findExport(e.id)) throw QmpError.generic(`Block export id '${e.id}' is already in use`);
    const node = findNode(graph, e.nodeName);
    if (!node) throw QmpError.generic(e.lookupMessage);
    if (e.writable && node.readOnly) throw QmpError.generic('Cannot export read-only node as writable');
    // colo-blk has no iothreads, so no iothread id can be found.
    if (e.iothread !== undefined) throw QmpError.generic(`iothread "${e.iothread}" not found`);
    if (!exports.serverRunning) throw QmpError.generic('NBD server not running');
    const name = e.name ?? e.nodeName;
    if (Buffer.byteLength(name) > NBD_MAX_STRING) throw QmpError.generic(`export name '${name}' too long`);
    if (e.description !== undefined && Buffer.byteLength(e.description) > NBD_MAX_STRING) {
      throw QmpError.generic(`description '${e.description}' too long`);
    }
    if (exports.hasExportName(name)) throw QmpError.generic(`NBD server already has export named '${name}'`);
    // colo-blk has no dirty bitmaps, so every bitmap named is missing.
    for (const b of e.bitmaps ?? []) {
      if (typeof b === 'string') throw QmpError.generic(`Bitmap '${b}' is not found`);
      if (!findNode(graph, b.node)) throw QmpError.generic(`Node '${b.node}' not found`);
      throw QmpError.generic(`Dirty bitmap '${b.name}' not found`);
    }
    const config: Parameters<ExportControl['addExport']>[0] = {
      id: e.id,
      node,
      name,
      writable: e.writable,
      writethrough: e.writethrough ?? false,
      allocationDepth: e.allocationDepth ?? false,
    };
    if (e.description !== undefined) config.description = e.description;
    await exports.addExport(config);
  }

  async function removeExport(id: string, mode: 'safe' | 'hard'): Promise<void> {
    const exp = exports.findExport(id);
    if (!exp) throw QmpError.generic(`Export '${id}' is not found`);
    if (exp.shuttingDown) throw QmpError.generic(`Export '${id}' is already shutting down`);
    await exports.removeExport(id, mode);
  }

  return [
    command({
      name: 'nbd-server-start',
      args: struct('NbdServerOptions', {
        addr: nbdServerAddress,
        '*tls-creds': str,
        '*tls-authz': str,
        '*max-connections': uint32,
      }),
      async handler(args) {
        if (exports.serverRunning) throw QmpError.generic('NBD server already running');
        const addr = args.addr;
        // colo-blk has no getfd and no QOM objects, so named descriptors and TLS credentials never exist.
        if (addr.type === 'fd') throw QmpError.generic(`File descriptor named '${addr.str}' has not been found`);
        if (addr.type === 'vsock') throw QmpError.generic('colo-blk does not support vsock socket addresses');
        if (args['tls-creds'] !== undefined) throw QmpError.generic(`No TLS credentials with id '${args['tls-creds']}'`);
        const config: Parameters<ExportControl['startServer']>[0] = { addr, maxConnections: args['max-connections'] ?? 0 };
        if (args['tls-authz'] !== undefined) config.tlsAuthz = args['tls-authz'];
        await exports.startServer(config);
      },
    }),
    command({
      name: 'nbd-server-add',
      args: struct('NbdServerAddOptions', {
        '*name': str,
        '*description': str,
        device: str,
        '*writable': bool,
        '*bitmap': str,
      }),
      features: ['deprecated'],
      async handler(args) {
        const node = findNode(graph, args.device);
        if (!node) throw QmpError.generic(`Cannot find device='${args.device}' nor node-name='${args.device}'`);
        const name = args.name ?? args.device;
        const e: NewExport = {
          id: name,
          nodeName: node.nodeName,
          name,
          // nbd-server-add quietly exports a read-only node read-only.
          writable: (args.writable ?? false) && !node.readOnly,
          lookupMessage: `Cannot find device='' nor node-name='${node.nodeName}'`,
        };
        if (args.description !== undefined) e.description = args.description;
        if (args.bitmap !== undefined) e.bitmaps = [args.bitmap];
        await addExport(e);
      },
    }),
    command({
      name: 'nbd-server-remove',
      args: struct('q_obj_nbd-server-remove-arg', { name: str, '*mode': removeMode }),
      features: ['deprecated'],
      handler: (args) => removeExport(args.name, args.mode ?? 'safe'),
    }),
    command({
      name: 'nbd-server-stop',
      async handler() {
        if (!exports.serverRunning) throw QmpError.generic('NBD server not running');
        await exports.stopServer();
      },
    }),
    command({
      name: 'block-export-add',
      args: blockExportOptions,
      async handler(args) {
        const e: NewExport = {
          id: args.id,
          nodeName: args['node-name'],
          writable: args.writable ?? false,
          lookupMessage: `Cannot find device='' nor node-name='${args['node-name']}'`,
        };
        if (args.writethrough !== undefined) e.writethrough = args.writethrough;
        if (args.iothread !== undefined) e.iothread = args.iothread;
        if (args.name !== undefined) e.name = args.name;
        if (args.description !== undefined) e.description = args.description;
        if (args.bitmaps !== undefined) e.bitmaps = args.bitmaps;
        if (args['allocation-depth'] !== undefined) e.allocationDepth = args['allocation-depth'];
        await addExport(e);
      },
    }),
    command({
      name: 'block-export-del',
      args: struct('q_obj_block-export-del-arg', { id: str, '*mode': removeMode }),
      handler: (args) => removeExport(args.id, args.mode ?? 'safe'),
    }),
    command({
      name: 'query-block-exports',
      returns: listOf(blockExportInfo),
      handler: () => exports.listExports().map((e) => ({
        id: e.id,
        type: e.type,
        'node-name': e.nodeName,
        'shutting-down': e.shuttingDown,
      })),
    }),
  ];
}
