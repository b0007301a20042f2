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
import { collectGarbage } from '../util/gc.js';

let primed = false;

export function primeAllocator(): void {
  if (primed) return;
  primed = true;
  // Unreachable at once: the collection frees it, and the free moves the
  // thresholds. Only a tuning: without a collection the server is slower, not wrong.
  void Buffer.allocUnsafe(16 * 1024 * 1024);
  collectGarbage();
}
