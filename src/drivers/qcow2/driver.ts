/**
 * Opening a qcow2 node from blockdev options: the `file` child, the header
 * checks, dirty-image repair, and the backing (absent → the header's backing
 * file, null → none, a name or a dict → that node).
 */
import { dirname, isAbsolute, resolve } from 'node:path';
import { BlockError } from '../../block/errors.js';
import type { DriverDefinition, OpenContext } from '../../block/graph.js';
import type { BlockNode } from '../../block/node.js';
import { repairImage } from './check.js';
import { Incompat } from './format.js';
import { checkOpenable, hasQcow2Magic } from './header.js';
import { ImageFile, closeImageFile, openImageFile } from './image-file.js';
import { Qcow2Node } from './node.js';
import { cacheEntries, readQcow2Options, type Qcow2OpenOptions } from './options.js';
import { Qcow2State, readHeader } from './state.js';
import { claimWriter } from './write-claims.js';

/** Where a backing file named in a header lives: relative names are relative to the image. */
export function resolveBackingPath(imagePath: string, backingFile: string): string {
  if (isAbsolute(backingFile) || /^[a-z][a-z0-9+.-]*:/i.test(backingFile)) return backingFile;
  return resolve(dirname(imagePath), backingFile);
}

async function probeFormat(path: string): Promise<string> {
  const f = await openImageFile(path, true);
  try {
    const magic = Buffer.alloc(Math.min(4, f.length));
    await f.read(0, magic);
    return hasQcow2Magic(magic) ? 'qcow2' : 'raw';
  } finally {
    await closeImageFile(f);
  }
}

async function openBacking(ctx: OpenContext, imagePath: string, name: string, format: string | undefined): Promise<BlockNode> {
  if (/^[a-z][a-z0-9+.-]*:/i.test(name)) {
    throw new BlockError('ENOTSUP', `Could not open backing file '${name}': protocols in backing file names are not supported`);
  }
  const path = resolveBackingPath(imagePath, name);
  const fmt = format ?? (await probeFormat(path));
  try {
    return await ctx.openImage(path, fmt, true);
  } catch (err) {
    const e = BlockError.from(err, 'open');
    throw new BlockError(e.code, `Could not open backing file: ${e.message}`, { cause: err });
  }
}

export const qcow2Driver: DriverDefinition = {
  name: 'qcow2',
  kind: 'format',
  async open(ctx: OpenContext): Promise<BlockNode> {
    const opts = readQcow2Options(ctx.options);
    const file = await ctx.openChild('file');
    if (!file) throw new BlockError('EINVAL', 'A block device must be specified for "file"');
    const backingChoice = await ctx.openChild('backing', { readOnly: true });
    const io = new ImageFile(file);
    const release = ctx.readOnly ? () => undefined : claimWriter(file);
    try {
      return await openNode(ctx, io, file, opts, backingChoice, release);
    } catch (err) {
      release();
      throw err;
    }
  },
};

/** The rest of an open, once the file is claimed: header checks, repair, metadata, backing. */
async function openNode(
  ctx: OpenContext, io: ImageFile, file: BlockNode, opts: Qcow2OpenOptions, backingChoice: BlockNode | null | undefined, release: () => void,
): Promise<BlockNode> {
  let header = await readHeader(io);
  checkOpenable(header, true);
  if (opts.lazyRefcounts && header.version < 3) {
    throw new BlockError('EINVAL', 'Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level');
  }
  if (!ctx.readOnly && header.version === 3 && header.incompatible & BigInt(Incompat.DIRTY)) {
    // QEMU repairs a dirty image on a read-write open; so do we.
    checkOpenable(header, false);
    await repairImage(io);
    header = await readHeader(io);
  }
  const state = await Qcow2State.open(io, header, ctx.readOnly, cacheEntries(opts, 2 ** header.clusterBits, header.l1Size));
  let backing: BlockNode | null = null;
  if (backingChoice === undefined) {
    if (header.backingFile !== undefined && header.backingFile !== '') {
      backing = await openBacking(ctx, file.filename, header.backingFile, header.backingFormat);
    }
  } else {
    backing = backingChoice;
  }
  return new Qcow2Node(ctx.nodeName, ctx.readOnly, file, state, backing, { discardNoUnref: opts.discardNoUnref, emptyKeepsSpace: opts.emptyKeepsSpace }, release);
}
