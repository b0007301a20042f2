/**
 * Opens an image named on a command line the way qemu-img and qemu-io do:
 * a file name with an optional format (probed from the magic when absent),
 * an `nbd://` URI, or a full option string with `--image-opts`.
 */
import { open as openFile } from 'node:fs/promises';
import { BlockError, strerror } from '../block/errors.js';
import type { BlockGraph } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { parseOptionArg, type OptionDict } from '../block/options.js';
import { parseNbdUri } from '../nbd/address.js';

export interface ImageSpec {
  filename: string;
  format?: string;
  /** The filename is a blockdev option string (`--image-opts`). */
  imageOpts?: boolean;
  readOnly: boolean;
}

const QCOW2_MAGIC = 0x514649fb;

/** 'qcow2' when the file starts with the qcow2 magic, else 'raw'. */
export async function probeFormat(filename: string): Promise<string> {
  let handle;
  try {
    handle = await openFile(filename, 'r');
  } catch (err) {
    const code = BlockError.from(err, 'open').code;
    throw new BlockError(code, `Could not open '${filename}': ${strerror(code)}`, { cause: err });
  }
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await handle.read(head, 0, 4, 0);
    return bytesRead === 4 && head.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  } finally {
    await handle.close();
  }
}

/** nbd driver options for an `nbd://` or `nbd+unix://` URI, or null for anything else. */
export function nbdUriOptions(uri: string): OptionDict | null {
  const parsed = parseNbdUri(uri);
  if (!parsed) return null;
  const { address, exportName } = parsed;
  const server: OptionDict = address.type === 'unix'
    ? { type: 'unix', path: address.path }
    : { type: 'inet', host: address.host, port: String(address.port) };
  return exportName === '' ? { driver: 'nbd', server } : { driver: 'nbd', server, export: exportName };
}

/** The blockdev options for an image spec (before opening it). */
export async function imageOptions(spec: ImageSpec): Promise<OptionDict> {
  if (spec.imageOpts) return parseOptionArg(spec.filename, 'file');
  const nbd = nbdUriOptions(spec.filename);
  if (nbd) {
    return spec.format && spec.format !== 'raw' ? { driver: spec.format, file: nbd } : { driver: 'raw', file: nbd };
  }
  const format = spec.format ?? (await probeFormat(spec.filename));
  if (format === 'file') return { driver: 'file', filename: spec.filename };
  return { driver: format, file: { driver: 'file', filename: spec.filename } };
}

export async function openImage(graph: BlockGraph, spec: ImageSpec): Promise<BlockNode> {
  const options = await imageOptions(spec);
  if (!graph.hasDriver(String(options.driver))) {
    throw new BlockError('EINVAL', `Unknown driver '${String(options.driver)}'`);
  }
  return graph.open(options, { readOnly: spec.readOnly });
}
