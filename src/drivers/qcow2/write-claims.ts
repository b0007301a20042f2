/**
 * One writer per image file in this process. Node has no OFD locks, so
 * QEMU's "Failed to get 'write' lock" protection is kept in-process at
 * least: two read-write qcow2 nodes on one file would each cache its own
 * metadata and corrupt it.
 */
import { statSync } from 'node:fs';
import { BlockError } from '../../block/errors.js';
import type { BlockNode } from '../../block/node.js';
import { FileNode } from '../file.js';

const writers = new Set<string>();

function identity(file: BlockNode): string | null {
  if (!(file instanceof FileNode)) return null;
  try {
    const st = statSync(file.path);
    return `${st.dev}:${st.ino}`;
  } catch {
    return null;
  }
}

/** Claims the file for writing; returns a release function. */
export function claimWriter(file: BlockNode): () => void {
  const id = identity(file);
  if (id === null) return () => undefined;
  if (writers.has(id)) {
    throw new BlockError('EBUSY', `Failed to get "write" lock: ${file.filename} is already open read-write in this process`);
  }
  writers.add(id);
  let released = false;
  return () => {
    if (!released) {
      released = true;
      writers.delete(id);
    }
  };
}
