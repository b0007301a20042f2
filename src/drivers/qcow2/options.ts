/**
 * QEMU's qcow2 runtime options. Cache sizes are honoured (as whole-table
 * entry counts); the discard and overlap-check switches are accepted; what
 * colo-blk cannot do (encryption, external data files) is refused.
 */
import { BlockError } from '../../block/errors.js';
import type { OptionReader } from '../../block/options.js';
import { isDict } from '../../block/options.js';

export interface Qcow2OpenOptions {
  l2CacheSize?: number;
  refcountCacheSize?: number;
  cacheSize?: number;
  lazyRefcounts?: boolean;
  discardNoUnref: boolean;
  emptyKeepsSpace: boolean;
}

const OVERLAP_KINDS = [
  'template', 'main-header', 'active-l1', 'active-l2', 'refcount-table', 'refcount-block',
  'snapshot-table', 'inactive-l1', 'inactive-l2', 'bitmap-directory',
];

export function readQcow2Options(o: OptionReader): Qcow2OpenOptions {
  if (o.has('data-file')) throw new BlockError('ENOTSUP', 'qcow2 external data files are not supported by colo-blk');
  if (o.has('encrypt')) throw new BlockError('ENOTSUP', 'qcow2 encryption is not supported by colo-blk');
  const out: Qcow2OpenOptions = {
    discardNoUnref: o.optBool('discard-no-unref') ?? false,
    emptyKeepsSpace: o.optBool('x-empty-keeps-space') ?? false,
  };
  const lazy = o.optBool('lazy-refcounts');
  if (lazy !== undefined) out.lazyRefcounts = lazy;
  const l2 = o.optInt('l2-cache-size');
  if (l2 !== undefined) out.l2CacheSize = l2;
  const rc = o.optInt('refcount-cache-size');
  if (rc !== undefined) out.refcountCacheSize = rc;
  const all = o.optInt('cache-size');
  if (all !== undefined) out.cacheSize = all;
  const entry = o.optInt('l2-cache-entry-size');
  if (entry !== undefined && (entry < 512 || entry > 2 * 1024 * 1024 || (entry & (entry - 1)) !== 0)) {
    throw new BlockError('EINVAL', 'L2 cache entry size must be a power of two between 512 and the cluster size');
  }
  o.optInt('cache-clean-interval');
  o.optBool('pass-discard-request');
  o.optBool('pass-discard-snapshot');
  o.optBool('pass-discard-other');
  const overlap = o.take('overlap-check');
  if (overlap !== undefined) {
    if (typeof overlap === 'string') {
      if (!['none', 'constant', 'cached', 'all'].includes(overlap)) {
        throw new BlockError('EINVAL', `Parameter 'overlap-check' does not accept value '${overlap}'`);
      }
    } else if (isDict(overlap)) {
      for (const k of Object.keys(overlap)) {
        if (!OVERLAP_KINDS.includes(k)) throw new BlockError('EINVAL', `Parameter 'overlap-check.${k}' is unexpected`);
      }
    } else {
      throw new BlockError('EINVAL', "Invalid parameter type for 'overlap-check', expected: string or object");
    }
  }
  return out;
}

export interface CacheEntries {
  l2Entries: number;
  refcountEntries: number;
}

const DEFAULT_L2_MAX = 32 * 1024 * 1024;

/** QEMU's cache sizing: L2 covers the whole disk up to 32 MiB; refcounts get a few clusters. */
export function cacheEntries(opts: Qcow2OpenOptions, clusterSize: number, l1Size: number): CacheEntries {
  const fullL2 = Math.max(1, l1Size) * clusterSize;
  let l2 = opts.l2CacheSize;
  let rc = opts.refcountCacheSize;
  const defaultRc = Math.max(4 * clusterSize, 256 * 1024);
  if (opts.cacheSize !== undefined) {
    if (l2 !== undefined && rc !== undefined) {
      if (l2 + rc > opts.cacheSize) throw new BlockError('EINVAL', 'l2-cache-size + refcount-cache-size may not exceed cache-size');
    } else if (l2 !== undefined) {
      if (l2 > opts.cacheSize) throw new BlockError('EINVAL', 'l2-cache-size may not exceed cache-size');
      rc = opts.cacheSize - l2;
    } else if (rc !== undefined) {
      if (rc > opts.cacheSize) throw new BlockError('EINVAL', 'refcount-cache-size may not exceed cache-size');
      l2 = opts.cacheSize - rc;
    } else {
      l2 = Math.min(fullL2, Math.max(opts.cacheSize - 4 * clusterSize, 0));
      rc = opts.cacheSize - l2;
    }
  }
  l2 ??= Math.min(fullL2, DEFAULT_L2_MAX);
  rc ??= defaultRc;
  return {
    l2Entries: Math.max(2, Math.floor(l2 / clusterSize)),
    refcountEntries: Math.max(4, Math.floor(rc / clusterSize)),
  };
}
