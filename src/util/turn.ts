/**
 * Resolves in the check phase of the event loop, after the pending I/O
 * callbacks ran: long work awaits it to let sockets and other requests in.
 */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
