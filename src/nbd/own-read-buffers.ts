/**
 * Lets a server connection choose the buffer each socket read lands in.
 *
 * Node hands a server's sockets their bytes in 64 KiB chunks it allocates
 * per read; a WRITE payload then costs a second copy out of those chunks and
 * an ArrayBuffer per read for the garbage collector. Node's `onread` option,
 * which reads into buffers the caller supplies, is only offered for sockets
 * the program connects itself. An accepted socket's handle can be given to
 * such a socket: the listener pauses it on accept (`pauseOnConnect`), and a
 * new `net.Socket` takes over the handle with `onread`. Then the connection
 * can have the rest of a WRITE payload read straight into the payload's own
 * buffer, and everything else into a slab that is carved up, never reused.
 *
 * This leans on `socket._handle`, a Node internal that has been stable for
 * a decade; where it is missing, `adoptWithOwnBuffers` returns null and the
 * connection reads 'data' events as before.
 */
import net from 'node:net';

/** Reads land in slabs of this size; a read is offered at least `MIN_READ` bytes of one. */
const SLAB_SIZE = 256 * 1024;
const MIN_READ = 32 * 1024;

export interface OwnBufferReader {
  /** The buffer the next read should fill, or null for the next piece of the slab. */
  target(): Buffer | null;
  /** `n` bytes arrived at the start of `buf` (`direct`: `buf` is what `target` returned). */
  arrived(n: number, buf: Buffer, direct: boolean): void;
}

/**
 * Moves an accepted, paused socket's handle into a socket that reads into
 * the reader's buffers. The old socket object lets go of the handle and is
 * destroyed when the new one closes, so the server's connection count (and
 * `maxConnections`) still follow the connection's life.
 */
export function adoptWithOwnBuffers(accepted: net.Socket, reader: OwnBufferReader): net.Socket | null {
  const internals = accepted as unknown as { _handle?: unknown };
  const handle = internals._handle;
  if (handle === null || typeof handle !== 'object' || accepted.readableFlowing === true) return null;
  let slab = Buffer.allocUnsafe(SLAB_SIZE);
  let used = 0;
  let direct: Buffer | null = null;
  // The constructor takes `handle` and `onread`; Node's type definitions only list them for other calls.
  const options: net.SocketConstructorOpts & { handle: object; onread: net.OnReadOpts } = {
    handle,
    allowHalfOpen: accepted.allowHalfOpen,
    onread: {
      buffer: (): Buffer => {
        direct = reader.target();
        if (direct) return direct;
        if (SLAB_SIZE - used < MIN_READ) {
          slab = Buffer.allocUnsafe(SLAB_SIZE);
          used = 0;
        }
        return slab.subarray(used);
      },
      callback: (n: number, buf: Uint8Array): boolean => {
        const isDirect = buf === direct;
        if (!isDirect) used += n;
        reader.arrived(n, buf as Buffer, isDirect);
        return true;
      },
    },
  };
  const socket = new net.Socket(options);
  internals._handle = null;
  socket.once('close', () => accepted.destroy());
  return socket;
}
