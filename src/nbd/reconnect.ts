/**
 * An NBD client that survives a lost connection the way QEMU's nbd driver
 * does with `reconnect-delay`:
 *
 * - connected: requests go straight to the current connection;
 * - waiting: the connection broke less than `reconnectDelayMs` ago; requests
 *   in flight and new ones wait, a background loop reconnects, and when it
 *   succeeds the waiting requests are sent (again) on the new connection;
 * - failing: the delay expired; requests fail with EIO at once while the loop
 *   keeps trying, and a successful reconnect makes the node usable again;
 * - dead: no reconnect-delay, or the server broke the protocol: every request
 *   fails with EIO (the replication engine decides what to do about that).
 *
 * Requests that were in flight when the connection broke are re-sent after a
 * reconnect, as QEMU does; NBD requests are idempotent, and a write that did
 * land is simply written again.
 */
import { BlockError } from '../block/errors.js';
import type { Logger } from '../util/log.js';
import { ConnectionLostError, NbdClient, type ClientOptions } from './client.js';
import type { NegotiatedExport } from './client-handshake.js';
import { TxFlag } from './constants.js';
import { describe, type SocketAddress } from './address.js';

export type ConnectionState = 'connected' | 'waiting' | 'failing' | 'dead' | 'closed';

export interface ReconnectOptions {
  address: SocketAddress;
  client: ClientOptions;
  /** 0 = no reconnect. */
  reconnectDelayMs: number;
  /** Keep retrying the first connection for this long (0 = one attempt). */
  openTimeoutMs: number;
  log: Logger;
}

const FIRST_RETRY_MS = 100;

/** Capabilities the node was opened with; a reconnect must offer them all again. */
const KEPT_FLAGS = TxFlag.READ_ONLY | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES
  | TxFlag.SEND_FAST_ZERO;

/** Why a new connection cannot stand in for the first one, or null when it can. */
function incompatibility(first: NegotiatedExport, next: NegotiatedExport): string | null {
  if (next.size !== first.size) return `size ${first.size} became ${next.size}`;
  if ((next.txFlags & KEPT_FLAGS) !== (first.txFlags & KEPT_FLAGS)) {
    return `flags 0x${first.txFlags.toString(16)} became 0x${next.txFlags.toString(16)}`;
  }
  if (next.minBlock !== first.minBlock || next.maxBlock < first.maxBlock) {
    return `block sizes ${first.minBlock}/${first.maxBlock} became ${next.minBlock}/${next.maxBlock}`;
  }
  return null;
}
const MAX_RETRY_MS = 2000;

export class ReconnectingClient {
  private client: NbdClient;
  private stateValue: ConnectionState = 'connected';
  private failure: BlockError | null = null;
  private waiters: Array<() => void> = [];
  private readonly listeners = new Set<(state: ConnectionState, error: BlockError | null) => void>();
  private delayTimer: NodeJS.Timeout | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private wakeRetry: (() => void) | null = null;
  /** How many times the connection was re-established. */
  reconnects = 0;

  private constructor(first: NbdClient, private readonly options: ReconnectOptions) {
    this.client = first;
    this.watch(first);
  }

  static async open(options: ReconnectOptions): Promise<ReconnectingClient> {
    const deadline = Date.now() + options.openTimeoutMs;
    let delay = FIRST_RETRY_MS;
    for (;;) {
      try {
        const client = await NbdClient.connect(options.address, options.client);
        return new ReconnectingClient(client, options);
      } catch (err) {
        // Only a failure to reach the server is worth retrying; a refusal by the server is final.
        if (!(err instanceof ConnectionLostError) || Date.now() + delay > deadline) throw err;
        options.log.debug('nbd-client.open-retry', { error: (err as Error).message });
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, MAX_RETRY_MS);
      }
    }
  }

  /** The export as first negotiated (a reconnect must find the same size). */
  get info(): NegotiatedExport {
    return this.client.info;
  }

  get state(): ConnectionState {
    return this.stateValue;
  }

  get address(): SocketAddress {
    return this.options.address;
  }

  /** Whether a request that fails with a lost connection is sent again after a reconnect. */
  get retries(): boolean {
    return this.options.reconnectDelayMs > 0;
  }

  /** Runs `op` on the current connection, waiting out or failing through a reconnect as set up. */
  run<T>(op: (client: NbdClient) => Promise<T>): Promise<T> {
    // Without reconnects a request simply fails with its connection: no retry loop, no extra promise.
    if (this.stateValue === 'connected' && this.options.reconnectDelayMs === 0) {
      try {
        return op(this.client);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.runRetrying(op);
  }

  private async runRetrying<T>(op: (client: NbdClient) => Promise<T>): Promise<T> {
    for (;;) {
      switch (this.stateValue) {
        case 'connected': {
          const client = this.client;
          try {
            return await op(client);
          } catch (err) {
            if (err instanceof ConnectionLostError && this.options.reconnectDelayMs > 0 && this.state !== 'closed') {
              continue; // the state moved to 'waiting' (or on): decide again
            }
            throw err;
          }
        }
        case 'waiting':
          await new Promise<void>((resolve) => this.waiters.push(resolve));
          continue;
        case 'closed':
          throw new BlockError('ENOMEDIUM', 'NBD connection closed');
        default:
          throw new BlockError('EIO', this.failure?.message ?? 'NBD connection lost', { cause: this.failure });
      }
    }
  }

  async close(): Promise<void> {
    if (this.stateValue === 'closed') return;
    this.setState('closed');
    this.clearTimers();
    this.wakeRetry?.();
    this.notify();
    await this.client.close();
  }

  private watch(client: NbdClient): void {
    client.onLost = (err) => this.lost(client, err);
  }

  private lost(client: NbdClient, err: BlockError): void {
    if (client !== this.client || this.stateValue !== 'connected') return;
    this.failure = err;
    const log = this.options.log;
    if (!(err instanceof ConnectionLostError) || this.options.reconnectDelayMs === 0) {
      this.setState('dead');
      log.warn('nbd-client.state', { state: 'dead', error: err.message });
      this.notify();
      return;
    }
    this.setState('waiting');
    log.warn('nbd-client.state', { state: 'waiting', error: err.message, reconnectDelayMs: this.options.reconnectDelayMs });
    this.delayTimer = setTimeout(() => {
      this.delayTimer = null;
      if (this.stateValue !== 'waiting') return;
      this.setState('failing');
      log.warn('nbd-client.state', { state: 'failing', reason: 'reconnect-delay expired' });
      this.notify();
    }, this.options.reconnectDelayMs);
    void this.reconnectLoop();
  }

  private async reconnectLoop(): Promise<void> {
    const log = this.options.log;
    const first = this.client.info;
    let delay = FIRST_RETRY_MS;
    while (this.stateValue === 'waiting' || this.stateValue === 'failing') {
      try {
        const client = await NbdClient.connect(this.options.address, this.options.client);
        if (this.state === 'closed') {
          await client.close();
          return;
        }
        const changed = incompatibility(first, client.info);
        if (changed) {
          await client.close();
          throw new BlockError('EIO', `the export changed across the reconnect: ${changed}`);
        }
        this.client = client;
        this.watch(client);
        this.clearTimers();
        this.setState('connected');
        this.reconnects++;
        log.info('nbd-client.state', { state: 'connected', reconnects: this.reconnects, server: describe(this.options.address) });
        this.notify();
        return;
      } catch (err) {
        log.debug('nbd-client.reconnect-failed', { error: (err as Error).message, retryMs: delay });
      }
      await new Promise<void>((resolve) => {
        this.wakeRetry = resolve;
        this.retryTimer = setTimeout(resolve, delay);
        // Requests waiting out the delay keep the process alive; a node that only fails does not.
        if (this.state !== 'waiting') this.retryTimer.unref();
      });
      this.wakeRetry = null;
      delay = Math.min(delay * 2, MAX_RETRY_MS);
    }
  }

  /** Subscribes to state changes (the replication engine and status reports use it). */
  onStateChange(listener: (state: ConnectionState, error: BlockError | null) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private setState(state: ConnectionState): void {
    if (this.stateValue === state) return;
    this.stateValue = state;
    for (const l of this.listeners) l(state, state === 'connected' || state === 'closed' ? null : this.failure);
  }

  private notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private clearTimers(): void {
    if (this.delayTimer) clearTimeout(this.delayTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.delayTimer = null;
    this.retryTimer = null;
  }
}
