/**
 * A full garbage collection on demand, for the few places that must choose
 * when one happens (priming the allocator, a benchmark's quiet moment).
 * Node exposes `gc` only under --expose-gc; the flag can still be set at
 * run time, and a new context then sees the function.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let collect: (() => void) | null | undefined;

/** Runs a full collection, or nothing when this runtime offers no way to. */
export function collectGarbage(): void {
  if (collect === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      const gc: unknown = runInNewContext('gc');
      collect = typeof gc === 'function' ? (gc as () => void) : null;
    } catch {
      collect = null;
    }
  }
  collect?.();
}
