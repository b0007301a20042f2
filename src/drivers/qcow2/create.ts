/**
 * Creating an image with qemu-img 7.2's layout: header (and its extensions,
 * and the backing name) in cluster 0, the reftable, the first refblock, the
 * L1 table, then any further refblocks that the L1 of a small-cluster image
 * needs. The file ends right after the L1 when one refblock suffices, as
 * qemu-img's does.
 */
import { open as openFile } from 'node:fs/promises';
import { BlockError } from '../../block/errors.js';
import { Compat, divRoundUp, isPowerOfTwo, setRefcount, writeEntry } from './format.js';
import { newFeatureTableExtension, serializeHeader, type Qcow2Header } from './header.js';

export interface Qcow2CreateOptions {
  size: number;
  clusterSize?: number;
  backingFile?: string;
  backingFormat?: string;
  refcountBits?: number;
  lazyRefcounts?: boolean;
}

export interface Qcow2Layout {
  clusterSize: number;
  refcountOrder: number;
  l1Size: number;
  l1Clusters: number;
  reftableClusters: number;
  refblocks: number;
  /** Cluster index of each structure. */
  reftableAt: number;
  firstRefblockAt: number;
  l1At: number;
  extraRefblocksAt: number;
  totalClusters: number;
}

export function planLayout(size: number, clusterSize: number, refcountOrder: number): Qcow2Layout {
  const l2Entries = clusterSize / 8;
  const l1Size = divRoundUp(size, clusterSize * l2Entries);
  const l1Clusters = divRoundUp(l1Size * 8, clusterSize);
  const perBlock = (clusterSize * 8) >> refcountOrder;
  let reftableClusters = 1;
  let refblocks = 1;
  for (;;) {
    const total = 1 + reftableClusters + refblocks + l1Clusters;
    const nb = divRoundUp(total, perBlock);
    const nr = Math.max(1, divRoundUp(nb * 8, clusterSize));
    if (nb === refblocks && nr === reftableClusters) break;
    refblocks = nb;
    reftableClusters = nr;
  }
  const reftableAt = 1;
  const firstRefblockAt = 1 + reftableClusters;
  const l1At = firstRefblockAt + 1;
  return {
    clusterSize,
    refcountOrder,
    l1Size,
    l1Clusters,
    reftableClusters,
    refblocks,
    reftableAt,
    firstRefblockAt,
    l1At,
    extraRefblocksAt: l1At + l1Clusters,
    totalClusters: 1 + reftableClusters + refblocks + l1Clusters,
  };
}

export function validateCreate(opts: Qcow2CreateOptions): { clusterSize: number; order: number } {
  const clusterSize = opts.clusterSize ?? 65536;
  if (!isPowerOfTwo(clusterSize) || clusterSize < 512 || clusterSize > 2 * 1024 * 1024) {
    throw new BlockError('EINVAL', 'Cluster size must be a power of two between 512 and 2048k');
  }
  const bits = opts.refcountBits ?? 16;
  if (!isPowerOfTwo(bits) || bits > 64) throw new BlockError('EINVAL', 'Refcount width must be a power of two and may not exceed 64 bits');
  if (!Number.isSafeInteger(opts.size) || opts.size < 0) throw new BlockError('EINVAL', `Invalid image size ${opts.size}`);
  if (opts.backingFile !== undefined && opts.backingFormat === undefined) {
    throw new BlockError('EINVAL', 'Backing file specified without backing format');
  }
  if (opts.backingFile === undefined && opts.backingFormat !== undefined) {
    throw new BlockError('EINVAL', 'Backing format cannot be used without backing file');
  }
  return { clusterSize, order: Math.log2(bits) };
}

/** The bytes of a new image (everything up to the end of the file). */
export function buildImage(opts: Qcow2CreateOptions): Buffer {
  const { clusterSize: cs, order } = validateCreate(opts);
  const layout = planLayout(opts.size, cs, order);
  const header: Qcow2Header = {
    version: 3,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: Math.log2(cs),
    size: opts.size,
    cryptMethod: 0,
    l1Size: layout.l1Size,
    l1TableOffset: layout.l1Size > 0 ? layout.l1At * cs : 0,
    refcountTableOffset: layout.reftableAt * cs,
    refcountTableClusters: layout.reftableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatible: 0n,
    compatible: opts.lazyRefcounts ? BigInt(Compat.LAZY_REFCOUNTS) : 0n,
    autoclear: 0n,
    refcountOrder: order,
    headerLength: 112,
    compressionType: 0,
    extensions: cs > 4096 ? [newFeatureTableExtension()] : [],
  };
  if (opts.backingFormat !== undefined) header.backingFormat = opts.backingFormat;
  if (opts.backingFile !== undefined) header.backingFile = opts.backingFile;
  const cluster0 = serializeHeader(header);

  const end = layout.refblocks > 1 || layout.l1Size === 0
    ? layout.totalClusters * cs
    : layout.l1At * cs + layout.l1Size * 8;
  const image = Buffer.alloc(end);
  cluster0.copy(image, 0);
  const perBlock = (cs * 8) >> order;
  const blockAt = (j: number): number => (j === 0 ? layout.firstRefblockAt : layout.extraRefblocksAt + j - 1);
  const reftable = image.subarray(layout.reftableAt * cs, (layout.reftableAt + layout.reftableClusters) * cs);
  for (let j = 0; j < layout.refblocks; j++) writeEntry(reftable, j, blockAt(j) * cs, 0, 0);
  // Every cluster of the layout is used once (with size 0 there is no L1).
  const used = layout.l1Size === 0 ? 2 + layout.reftableClusters : layout.totalClusters;
  for (let c = 0; c < used; c++) {
    const j = Math.floor(c / perBlock);
    const at = blockAt(j) * cs;
    setRefcount(image.subarray(at, at + cs), c - j * perBlock, order, 1);
  }
  return image;
}

export async function createQcow2(path: string, opts: Qcow2CreateOptions): Promise<void> {
  const image = buildImage(opts);
  const fh = await openFile(path, 'w');
  try {
    await fh.writeFile(image);
    await fh.datasync();
  } catch (err) {
    throw BlockError.from(err, `Could not create '${path}'`);
  } finally {
    await fh.close();
  }
}
