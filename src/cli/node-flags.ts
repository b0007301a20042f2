/**
 * The Node.js flags colo-blk's processes run with. The `colo-blk`
 * executable's shebang carries the same list (a test keeps the two equal),
 * and everything that starts the CLI with `process.execPath` (the demo, the
 * benchmarks, the end-to-end tests) passes it too, so each runs the daemon
 * the way a user's `colo-blk` does.
 *
 * V8 starts the old generation with a limit of a few MiB and raises it one
 * step at a time, each step a full collection with the event loop stopped:
 * 8-12 ms on a 2-vCPU host. A daemon's heap reaches that limit in its first
 * seconds of I/O, so the pause landed wherever that happened; in
 * `bench:pair` it sat right inside the failover's first write in most
 * rounds. A 64 MiB starting limit commits no memory (peak RSS is unchanged);
 * it lets the heap grow to its working size without those stops.
 */
export const NODE_FLAGS: readonly string[] = ['--initial-old-space-size=64'];
