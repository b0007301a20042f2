/**
 * Primes glibc's malloc for an I/O server, once per process.
 *
 * glibc starts with a 128 KiB mmap threshold and a 128 KiB trim threshold:
 * every 1 MiB request buffer is then a fresh mmap, and the 256 KiB socket
 * read slabs are handed back to the kernel whenever the GC
 * frees them, so each request pays hundreds of page faults — the storm that
 * caps QEMU's NBD server at 1 MiB requests (anchor REPORT.md §5.1, fixed
 * there with GLIBC_TUNABLES). C code would call mallopt(); JavaScript cannot,
 * but glibc raises both thresholds by itself the first time an mmapped chunk
 * below 32 MiB is freed. So: allocate one 16 MiB buffer and collect it.
 * Measured on 1 MiB fio writes: 67k page faults per 256 requests without,
 * 9k with (the same as GLIBC_TUNABLES). Elsewhere than glibc this is a no-op.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let primed = false;

export function primeAllocator(): void {
  if (primed) return;
  primed = true;
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as (() => void) | undefined;
    if (typeof gc !== 'function') return;
    // Unreachable at once: the collection frees it, and the free moves the thresholds.
    void Buffer.allocUnsafe(16 * 1024 * 1024);
    gc();
  } catch {
    // Only a tuning: without it the server is slower, not wrong.
  }
}
