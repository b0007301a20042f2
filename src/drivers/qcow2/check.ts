/**
 * `qemu-img check` for qcow2 images: one pass counts references and compares
 * them with the refcounts (check-refs.ts); with a repair mode, mismatches are
 * fixed in place or the refcount structure is rebuilt (check-rebuild.ts),
 * and like qemu-img the image is then checked again.
 */
import { BlockError } from '../../block/errors.js';
import { Ext, Incompat, KNOWN_INCOMPAT } from './format.js';
import { Checker, FIX_ERRORS, FIX_LEAKS, newResult } from './check-refs.js';
import { rebuildRefcountStructure } from './check-rebuild.js';
import { incompatNames, type Qcow2Header } from './header.js';
import { ImageFile, closeImageFile, openImageFile } from './image-file.js';
import { readHeader } from './state.js';

export interface Qcow2CheckResult {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: number;
  allocatedClusters: number;
  totalClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  messages: string[];
}

/** Refuses images whose references this checker cannot enumerate (it would misreport them). */
function checkCheckable(h: Qcow2Header): void {
  const unknown = h.incompatible & ~BigInt(KNOWN_INCOMPAT);
  if (unknown !== 0n) throw new BlockError('ENOTSUP', `Unsupported qcow2 feature(s): ${incompatNames(h, unknown)}`);
  if (h.incompatible & BigInt(Incompat.EXTL2)) throw new BlockError('ENOTSUP', 'checking images with extended L2 entries is not supported');
  if (h.incompatible & BigInt(Incompat.DATA_FILE)) throw new BlockError('ENOTSUP', 'checking images with an external data file is not supported');
  if (h.cryptMethod !== 0 || h.extensions.some((e) => e.type === Ext.CRYPTO)) {
    throw new BlockError('ENOTSUP', 'checking encrypted images is not supported');
  }
  if (h.refcountOrder > 6) throw new BlockError('EINVAL', 'Reference count entry width too large; may not exceed 64 bits');
}

/** One check pass over an open image file (QEMU's qcow2_check_refcounts + check_oflag_copied). */
async function checkPass(file: ImageFile, fix: number): Promise<Qcow2CheckResult> {
  const res = newResult();
  let h: Qcow2Header;
  try {
    h = await readHeader(file);
    checkCheckable(h);
  } catch (err) {
    res.checkErrors++;
    res.messages.push(`ERROR: ${(err as Error).message}`);
    return res;
  }
  const ck = new Checker(file, h, res, fix);
  res.totalClusters = Math.ceil(h.size / ck.cs);
  try {
    await ck.loadReftable();
    const { rebuild: brokenBlocks } = await ck.calculate(true);
    const pre = { ...res, messages: [...res.messages] };
    let { highest, rebuild } = await ck.compare(0);
    rebuild ||= brokenBlocks;
    if (rebuild && fix & FIX_ERRORS) {
      const old = { corruptions: res.corruptions, leaks: res.leaks };
      res.messages.push('Rebuilding refcount structure');
      await rebuildRefcountStructure(ck);
      ck.resetCounts();
      res.corruptions = 0;
      res.leaks = 0;
      const keep = { ...res };
      await ck.calculate(false);
      Object.assign(res, { allocatedClusters: keep.allocatedClusters, fragmentedClusters: keep.fragmentedClusters, compressedClusters: keep.compressedClusters });
      const after = await ck.compare(fix & FIX_LEAKS);
      highest = after.highest;
      if (after.rebuild) res.messages.push('ERROR rebuilt refcount structure is still broken');
      if (res.corruptions < old.corruptions) res.corruptionsFixed += old.corruptions - res.corruptions;
      if (res.leaks < old.leaks) res.leaksFixed += old.leaks - res.leaks;
    } else if (fix) {
      if (rebuild) {
        res.messages.push('ERROR need to rebuild refcount structures');
        res.checkErrors++;
        return res;
      }
      if (res.leaks || res.corruptions) {
        Object.assign(res, { ...pre, messages: res.messages });
        const again = await ck.compare(fix);
        highest = again.highest;
      }
    }
    await ck.checkCopied(fix);
    res.imageEndOffset = (highest + 1) * ck.cs;
  } catch (err) {
    res.checkErrors++;
    res.messages.push(`ERROR: ${(err as Error).message}`);
  }
  return res;
}

/**
 * Checks (and with `repair`, fixes) an image file like `qemu-img check`:
 * after a repair that fixed something, the image is checked again and that
 * second result is returned with the fixed counts of the first.
 */
export async function checkImageFile(file: ImageFile, repair?: 'leaks' | 'all'): Promise<Qcow2CheckResult> {
  const fix = repair === 'all' ? FIX_LEAKS | FIX_ERRORS : repair === 'leaks' ? FIX_LEAKS : 0;
  const first = await checkPass(file, fix);
  // Like QEMU, a repair that leaves no corruption marks the image clean and consistent.
  if (fix && first.checkErrors === 0 && first.corruptions === 0) await markClean(file, Incompat.DIRTY | Incompat.CORRUPT);
  if (!(first.corruptionsFixed || first.leaksFixed)) return first;
  const second = await checkPass(file, 0);
  second.corruptionsFixed = first.corruptionsFixed;
  second.leaksFixed = first.leaksFixed;
  second.messages = [...first.messages, ...second.messages];
  return second;
}

/** Clears incompatible bits (dirty, corrupt) after a successful repair. */
async function markClean(file: ImageFile, bitsToClear: number): Promise<void> {
  const h = await readHeader(file);
  const mask = BigInt(bitsToClear);
  if (h.version !== 3 || !(h.incompatible & mask)) return;
  const bits = Buffer.alloc(8);
  bits.writeBigUInt64BE(h.incompatible & ~mask);
  await file.write(72, bits);
  await file.sync();
}

/** Repairs a dirty image before a read-write open (QEMU does the same). */
export async function repairImage(file: ImageFile): Promise<void> {
  const res = await checkPass(file, FIX_LEAKS | FIX_ERRORS);
  if (res.checkErrors > 0 || res.corruptions > 0) {
    throw new BlockError('EIO', `Could not repair dirty image: ${res.messages.filter((m) => m.startsWith('ERROR')).slice(0, 3).join('; ')}`);
  }
  await markClean(file, Incompat.DIRTY);
}

export async function checkQcow2(path: string, opts: { repair?: 'leaks' | 'all' } = {}): Promise<Qcow2CheckResult> {
  const file = await openImageFile(path, opts.repair === undefined);
  try {
    return await checkImageFile(file, opts.repair);
  } finally {
    await closeImageFile(file);
  }
}
