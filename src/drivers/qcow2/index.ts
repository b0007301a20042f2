/**
 * The qcow2 driver and the library functions the CLI builds `colo-blk img`
 * on: create, info, check/repair, and format probing.
 */
import { Compat, Incompat } from './format.js';
import { hasQcow2Magic } from './header.js';
import { closeImageFile, openImageFile } from './image-file.js';
import { readHeader } from './state.js';

export { qcow2Driver } from './driver.js';
export { Qcow2Node } from './node.js';
export { createQcow2, type Qcow2CreateOptions } from './create.js';
export { checkQcow2, type Qcow2CheckResult } from './check.js';

export interface Qcow2Info {
  version: 2 | 3;
  virtualSize: number;
  clusterSize: number;
  refcountBits: number;
  backingFile?: string;
  backingFormat?: string;
  dirty: boolean;
  corrupt: boolean;
  lazyRefcounts: boolean;
  compressionType: 'zlib' | 'zstd';
  l1Size: number;
  extendedL2: boolean;
  fileLength: number;
}

export async function readQcow2Info(path: string): Promise<Qcow2Info> {
  const file = await openImageFile(path, true);
  try {
    const h = await readHeader(file);
    const info: Qcow2Info = {
      version: h.version,
      virtualSize: h.size,
      clusterSize: 2 ** h.clusterBits,
      refcountBits: 1 << h.refcountOrder,
      dirty: (h.incompatible & BigInt(Incompat.DIRTY)) !== 0n,
      corrupt: (h.incompatible & BigInt(Incompat.CORRUPT)) !== 0n,
      lazyRefcounts: (h.compatible & BigInt(Compat.LAZY_REFCOUNTS)) !== 0n,
      compressionType: h.compressionType === 1 ? 'zstd' : 'zlib',
      l1Size: h.l1Size,
      extendedL2: (h.incompatible & BigInt(Incompat.EXTL2)) !== 0n,
      fileLength: file.length,
    };
    if (h.backingFile !== undefined) info.backingFile = h.backingFile;
    if (h.backingFormat !== undefined) info.backingFormat = h.backingFormat;
    return info;
  } finally {
    await closeImageFile(file);
  }
}

/** Whether the first bytes of a file are a qcow2 header (format probing). */
export function isQcow2(firstBytes: Buffer): boolean {
  return hasQcow2Magic(firstBytes);
}

/** Whether the file at `path` is a qcow2 image. */
export async function isQcow2File(path: string): Promise<boolean> {
  const file = await openImageFile(path, true);
  try {
    const head = Buffer.alloc(Math.min(4, file.length));
    await file.read(0, head);
    return hasQcow2Magic(head);
  } finally {
    await closeImageFile(file);
  }
}
