/**
 * One client of the NBD server: moves bytes between its socket and the
 * codec, runs the negotiation, then serves requests concurrently and
 * answers them as they complete.
 *
 * Back-pressure instead of buffering: the decoder is only asked for another
 * frame while the connection has room (requests in flight, their payload
 * bytes, replies waiting for the client to read them); otherwise the socket
 * is paused. A request that started always finishes on the node even if
 * the client vanishes, so nothing is left half done; only its reply is lost.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../util/log.js';
import { Cmd, optionName } from './constants.js';
import type { NbdExport } from './export.js';
import { ServerNegotiation, type BlockSizes, type ExportCatalog, type Session } from './negotiation.js';
import { adoptWithOwnBuffers, type OwnBufferReader } from './own-read-buffers.js';
import { NbdProtocolError } from './protocol-error.js';
import { encodeGreeting, ServerDecoder, type RequestFrame, type ServerFrame } from './server-codec.js';
import { TransmissionHandler } from './transmission.js';

export interface ConnectionLimits {
  maxPayload: number;
  maxDrain: number;
  maxOptionLength: number;
  /** Requests served at once; more are left in the socket. */
  maxInFlight: number;
  /** Payload bytes (WRITE data and READ lengths) of the requests in flight. */
  maxInFlightBytes: number;
  /** Reply bytes queued for a slow reader before we stop reading its requests. */
  maxQueuedReplyBytes: number;
  handshakeTimeoutMs: number;
  /** How long a closing connection may take to hand its last replies to a client that does not read them. */
  closeTimeoutMs: number;
}

/** What a connection needs from its server. */
export interface ConnectionHost {
  readonly catalog: ExportCatalog;
  readonly blockSizes: BlockSizes;
  /** The export object behind a negotiated descriptor (undefined if it was removed meanwhile). */
  exportFor(session: Session): NbdExport | undefined;
  attach(conn: ServerConnection, exp: NbdExport): void;
  detach(conn: ServerConnection): void;
}

export type ConnectionPhase = 'handshake' | 'transmission' | 'closing' | 'closed';

export interface ConnectionInfo {
  id: number;
  remote: string;
  phase: ConnectionPhase;
  export: string | null;
  structured: boolean;
  inFlight: number;
  requests: number;
}

export class ServerConnection {
  phase: ConnectionPhase = 'handshake';
  private readonly decoder: ServerDecoder;
  private readonly negotiation: ServerNegotiation;
  private handler: TransmissionHandler | null = null;
  private exp: NbdExport | null = null;
  private session: Session | null = null;
  private inFlight = 0;
  private inFlightBytes = 0;
  private requests = 0;
  private paused = false;
  private pumping = false;
  /** No more requests will be read (DISC, EOF, protocol error, shutdown). */
  private readDone = false;
  private corked = false;
  private socketClosed = false;
  private ending = false;
  private handshakeTimer: NodeJS.Timeout | null;
  private closeReason = 'client disconnected';
  private resolveClosed!: () => void;
  /** Resolves once the socket is closed and every request it started has finished. */
  readonly closed: Promise<void>;
  /** `host:port` of a TCP peer, or 'unix'. */
  readonly remote: string;

  private readonly socket: Socket;

  constructor(
    readonly id: number,
    accepted: Socket,
    private readonly host: ConnectionHost,
    private readonly limits: ConnectionLimits,
    private readonly log: Logger,
  ) {
    this.closed = new Promise((resolve) => { this.resolveClosed = resolve; });
    this.decoder = new ServerDecoder({
      maxOptionLength: limits.maxOptionLength,
      maxPayload: limits.maxPayload,
      maxDrain: limits.maxDrain,
    });
    this.negotiation = new ServerNegotiation(host.catalog, host.blockSizes);
    const own = adoptWithOwnBuffers(accepted, this.reader);
    const socket = own ?? accepted;
    this.socket = socket;
    this.remote = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    socket.setNoDelay(true);
    if (!own) {
      socket.on('data', this.onData);
      socket.resume();
    }
    socket.on('end', this.onEnd);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
    socket.on('drain', this.onDrain);
    this.handshakeTimer = setTimeout(this.onHandshakeTimeout, limits.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    socket.write(encodeGreeting());
  }

  get exportName(): string | null {
    return this.exp?.name ?? null;
  }

  info(): ConnectionInfo {
    return {
      id: this.id,
      remote: this.remote,
      phase: this.phase,
      export: this.exportName,
      structured: this.session?.structured ?? false,
      inFlight: this.inFlight,
      requests: this.requests,
    };
  }

  /**
   * Ends the connection. Graceful: stop reading, finish the requests in
   * flight, send their replies, then close. Hard: close now (requests in
   * flight still finish on the node; their replies are dropped).
   */
  shutdown(reason: string, hard: boolean): void {
    this.closeReason = reason;
    this.stopReading();
    if (hard) this.socket.destroy();
    else this.maybeFinish();
  }

  // ------------------------------------------------------------ socket events

  private readonly onData = (chunk: Buffer): void => {
    this.decoder.push(chunk);
    this.pump();
  };

  /** Socket reads into our own buffers: the rest of a WRITE payload goes straight where it belongs. */
  private readonly reader: OwnBufferReader = {
    target: () => this.decoder.directTarget(),
    arrived: (n, buf, direct) => {
      if (!direct) {
        this.onData(buf.subarray(0, n));
        return;
      }
      this.decoder.pushDirect(n);
      this.pump();
    },
  };

  private readonly onEnd = (): void => {
    if (this.phase === 'handshake') this.closeReason = 'client closed during the handshake';
    this.stopReading();
    this.maybeFinish();
  };

  private readonly onError = (err: Error): void => {
    this.closeReason = `socket error: ${err.message}`;
    this.log.debug('nbd.socket-error', { conn: this.id, error: err });
  };

  private readonly onDrain = (): void => {
    this.pump();
  };

  private readonly onClose = (): void => {
    this.clearHandshakeTimer();
    this.socketClosed = true;
    this.readDone = true;
    this.decoder.stop();
    this.phase = 'closing';
    this.finishIfIdle();
  };

  private readonly onHandshakeTimeout = (): void => {
    this.handshakeTimer = null;
    if (this.phase !== 'handshake') return;
    this.log.warn('nbd.handshake-timeout', { conn: this.id, remote: this.remote, ms: this.limits.handshakeTimeoutMs });
    this.closeReason = 'handshake timed out';
    this.stopReading();
    this.socket.destroy();
  };

  // ----------------------------------------------------------------- parsing

  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (!this.readDone && this.hasRoom()) {
        const frame = this.decoder.next();
        if (!frame) break;
        this.onFrame(frame);
      }
    } catch (err) {
      this.protocolError(err);
    } finally {
      this.pumping = false;
    }
    this.updateFlow();
  }

  private hasRoom(): boolean {
    if (this.socket.writableLength > this.limits.maxQueuedReplyBytes) return false;
    // One request is always allowed so that a single large one cannot wedge the connection.
    return this.inFlight === 0
      || (this.inFlight < this.limits.maxInFlight && this.inFlightBytes < this.limits.maxInFlightBytes);
  }

  private updateFlow(): void {
    const stop = !this.readDone && !this.hasRoom();
    if (stop && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!stop && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private onFrame(frame: ServerFrame): void {
    switch (frame.kind) {
      case 'flags': {
        const step = this.negotiation.onClientFlags(frame.flags);
        if (step.end) this.endHandshake(step.reason ?? 'bad client flags', step.replies);
        return;
      }
      case 'option': {
        const step = this.negotiation.onOption(frame);
        this.log.debug('nbd.option', { conn: this.id, option: optionName(frame.code), length: frame.length });
        if (step.session) {
          this.send(step.replies);
          this.beginTransmission(step.session);
        } else if (step.end) {
          this.endHandshake(step.reason ?? 'negotiation ended', step.replies);
        } else {
          this.send(step.replies);
        }
        return;
      }
      case 'request':
        this.onRequest(frame);
        return;
    }
  }

  private endHandshake(reason: string, replies: Buffer[]): void {
    this.closeReason = reason;
    const level = reason === 'client sent NBD_OPT_ABORT' ? 'debug' : 'warn';
    this.log.log(level, 'nbd.negotiation-ended', { conn: this.id, remote: this.remote, reason });
    this.send(replies);
    this.stopReading();
    this.maybeFinish();
  }

  private beginTransmission(session: Session): void {
    const exp = this.host.exportFor(session);
    if (!exp) {
      this.endHandshake(`export '${session.export.name}' was removed during the handshake`, []);
      return;
    }
    this.clearHandshakeTimer();
    this.session = session;
    this.exp = exp;
    this.handler = new TransmissionHandler(exp, session, this.limits.maxPayload, this.log.child({ conn: this.id }));
    this.decoder.startTransmission();
    this.phase = 'transmission';
    this.host.attach(this, exp);
    this.log.info('nbd.negotiated', {
      conn: this.id,
      remote: this.remote,
      export: exp.name,
      structured: session.structured,
      contexts: [session.meta.baseAllocation && 'base:allocation', session.meta.allocationDepth && 'qemu:allocation-depth']
        .filter(Boolean),
      txFlags: `0x${session.txFlags.toString(16).padStart(4, '0')}`,
      via: session.viaExportName ? 'NBD_OPT_EXPORT_NAME' : 'NBD_OPT_GO',
      options: this.negotiation.optionsSeen.map(optionName),
    });
  }

  // ---------------------------------------------------------------- requests

  private onRequest(req: RequestFrame): void {
    const handler = this.handler!;
    const stats = this.exp!.stats;
    if (req.type === Cmd.DISC) {
      this.closeReason = 'client sent NBD_CMD_DISC';
      this.stopReading();
      this.maybeFinish();
      return;
    }
    const rejection = handler.validate(req);
    if (rejection) {
      this.requests++;
      stats.requests++;
      stats.errors++;
      this.log.debug('nbd.request-rejected', { conn: this.id, type: req.type, offset: req.offset, length: req.length, ...rejection });
      this.send([handler.rejection(req, rejection)]);
      return;
    }
    const cost = req.type === Cmd.READ || req.type === Cmd.WRITE ? req.length : 0;
    this.inFlight++;
    this.inFlightBytes += cost;
    stats.inFlight++;
    handler.serve(req).then((replies) => {
      this.requests++;
      stats.requests++;
      stats.inFlight--;
      this.inFlight--;
      this.inFlightBytes -= cost;
      this.send(replies);
      if (this.socketClosed) this.finishIfIdle();
      else if (this.readDone) this.maybeFinish();
      else this.pump();
    });
  }

  // ----------------------------------------------------------------- writing

  private send(buffers: Buffer[]): void {
    const socket = this.socket;
    if (buffers.length === 0 || socket.destroyed || !socket.writable) return;
    if (!this.corked) {
      // Replies finishing in the same tick leave in one writev.
      this.corked = true;
      socket.cork();
      setImmediate(this.uncork);
    }
    for (const b of buffers) socket.write(b);
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  // ----------------------------------------------------------------- closing

  private stopReading(): void {
    if (this.readDone) return;
    this.readDone = true;
    this.clearHandshakeTimer();
    this.decoder.stop();
    if (this.paused) {
      this.paused = false;
      this.socket.resume(); // keep draining the socket so that 'end' and 'close' arrive
    }
    if (this.phase === 'handshake' || this.phase === 'transmission') this.phase = 'closing';
  }

  /** Closes our side once nothing is in flight; the replies already queued go first. */
  private maybeFinish(): void {
    if (this.inFlight > 0 || this.socket.destroyed || this.ending) return;
    this.ending = true;
    if (this.socket.writable) {
      this.socket.end(() => this.socket.destroy());
      setTimeout(() => this.socket.destroy(), this.limits.closeTimeoutMs).unref();
    } else {
      this.socket.destroy();
    }
  }

  private finishIfIdle(): void {
    // With the socket gone, the last request still running on the node finishes the job.
    if (!this.socketClosed || this.inFlight > 0 || this.phase === 'closed') return;
    this.phase = 'closed';
    if (this.exp) this.host.detach(this);
    this.log.info('nbd.disconnect', {
      conn: this.id,
      remote: this.remote,
      export: this.exportName,
      reason: this.closeReason,
      requests: this.requests,
    });
    this.resolveClosed();
  }

  private protocolError(err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    if (!(err instanceof NbdProtocolError)) {
      this.log.error('nbd.internal-error', { conn: this.id, error: err });
    } else {
      this.log.warn('nbd.protocol-error', { conn: this.id, remote: this.remote, error: message });
    }
    this.closeReason = `protocol error: ${message}`;
    this.stopReading();
    this.socket.destroy();
  }

  private clearHandshakeTimer(): void {
    if (this.handshakeTimer) {
      clearTimeout(this.handshakeTimer);
      this.handshakeTimer = null;
    }
  }
}
