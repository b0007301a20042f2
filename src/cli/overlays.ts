/**
 * The secondary's active and hidden overlays as `colo-blk secondary` finds
 * them: created when absent, refused when they cannot serve (not qcow2,
 * damaged, another size), and measured before replication starts. Starting
 * empties them, and what an earlier run left in them is the only record of
 * its last checkpoint, so that is measured first and never touched here.
 */
import { existsSync, rmSync } from 'node:fs';
import { Status } from '../block/node.js';
import { DaemonUsageError } from '../daemon/args.js';
import { createGraph } from '../drivers/index.js';
import { createQcow2, readQcow2Info } from '../drivers/qcow2/index.js';
import { probeFormat } from './open-image.js';
import { describeSize } from './role.js';

export interface Overlay {
  option: '--active' | '--hidden';
  path: string;
  /** Made by this run (removed again if the start fails). */
  created: boolean;
}

/** Makes sure an overlay exists, is a sound qcow2 image and has the disk's size. */
export async function prepareOverlay(option: Overlay['option'], path: string, size: number): Promise<Overlay> {
  if (!existsSync(path)) {
    await createQcow2(path, { size });
    return { option, path, created: true };
  }
  const fresh = `name a new path (it will be created)`;
  if (await probeFormat(path) !== 'qcow2') {
    throw new DaemonUsageError(option, `${path} is not a qcow2 image, and overlays must be: ${fresh}`);
  }
  let info;
  try {
    info = await readQcow2Info(path);
  } catch (err) {
    throw new DaemonUsageError(option, `${path} is a damaged qcow2 image (${(err as Error).message}): repair it (qemu-img check -r all) or ${fresh}`);
  }
  if (info.virtualSize !== size) {
    throw new DaemonUsageError(option, `${path} is ${describeSize(info.virtualSize)} but the secondary disk is ${describeSize(size)}: ${fresh}, or one of the disk's size`);
  }
  return { option, path, created: false };
}

/** Bytes allocated in the overlay itself (its backing chain not counted), read without changing the file. */
export async function overlayDataBytes(path: string): Promise<number> {
  const graph = createGraph();
  try {
    const node = await graph.open({ driver: 'qcow2', file: { driver: 'file', filename: path }, backing: null }, { readOnly: true });
    let bytes = 0;
    for (let offset = 0; offset < node.size;) {
      const st = await node.blockStatus(offset, node.size - offset);
      if (st.flags & Status.ALLOCATED) bytes += st.length;
      offset += st.length;
    }
    return bytes;
  } finally {
    await graph.closeAll();
  }
}

/** Removes the overlays this run created, after a failed start. */
export function removeCreated(overlays: readonly Overlay[]): void {
  for (const o of overlays) if (o.created) rmSync(o.path, { force: true });
}
