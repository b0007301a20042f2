/**
 * One QMP client, independent of how bytes reach it (sans-I/O): it sends
 * the greeting, turns input into requests for the dispatcher, and writes
 * responses and events. Like QEMU it holds only a few parsed requests per
 * client; beyond that it asks the transport to stop reading, so a client
 * that floods the server is slowed down instead of filling memory.
 */
import type { Logger } from '../util/log.js';
import { JsonMessageStream, type JsonEvent, type JsonLimits } from './json-stream.js';
import { writeJson } from './json-write.js';
import type { SessionControl } from './registry.js';

export interface SessionTransport {
  write(text: string): void;
  /** Bytes written but not yet taken by the client. */
  readonly pendingOutput: number;
  pauseInput(): void;
  resumeInput(): void;
  /** `flush` sends what is queued first; otherwise the connection is dropped at once. */
  close(flush: boolean): void;
}

export interface SessionHost {
  /** The session has requests to run. */
  wake(session: QmpSession): void;
  /** The session is gone: forget its queued requests. */
  forget(session: QmpSession): void;
}

export interface SessionOptions {
  greeting: unknown;
  limits?: Partial<JsonLimits>;
  /** A client that lets more than this pile up unread is disconnected. */
  maxOutputBytes?: number;
  log: Logger;
}

/** QEMU's QMP_REQ_QUEUE_LEN_MAX. */
export const MAX_QUEUED_REQUESTS = 8;
const DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024;

let nextSessionId = 1;

export class QmpSession implements SessionControl {
  readonly id = nextSessionId++;
  private commandMode = false;
  private closed = false;
  private inputPaused = false;
  private inputEnded = false;
  private inFlight = 0;
  private readonly stream: JsonMessageStream;
  private readonly queue: JsonEvent[] = [];
  private readonly maxOutput: number;
  readonly log: Logger;

  constructor(private readonly transport: SessionTransport, private readonly host: SessionHost, private readonly options: SessionOptions) {
    this.stream = new JsonMessageStream(options.limits);
    this.maxOutput = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT;
    this.log = options.log.child({ client: this.id });
  }

  get negotiated(): boolean {
    return this.commandMode;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get hasRequests(): boolean {
    return this.queue.length > 0;
  }

  get queuedRequests(): number {
    return this.queue.length;
  }

  enterCommandMode(): void {
    this.commandMode = true;
  }

  start(): void {
    this.send(this.options.greeting);
  }

  receive(chunk: Uint8Array): void {
    if (this.closed) return;
    this.stream.write(chunk);
    this.pull();
  }

  /** The next request, in arrival order. Call `done` once it is answered. */
  take(): JsonEvent | undefined {
    const req = this.queue.shift();
    if (req) this.inFlight++;
    this.pull();
    return req;
  }

  /** The request taken last has been answered. */
  done(): void {
    this.inFlight--;
    this.closeIfFinished();
  }

  /**
   * The client sent EOF (it may still read): answer what it sent, then
   * close, as QEMU does for `echo '{...}' | nc -U -N socket`.
   */
  endInput(): void {
    this.inputEnded = true;
    this.closeIfFinished();
  }

  /** Sends a response or greeting object. */
  send(message: unknown): void {
    this.writeText(`${writeJson(message)}\r\n`);
  }

  /** Sends an already serialised event, if the client has negotiated. */
  sendEvent(line: string): void {
    if (this.commandMode) this.writeText(line);
  }

  close(flush = true): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.host.forget(this);
    this.transport.close(flush);
  }

  private closeIfFinished(): void {
    if (this.inputEnded && this.inFlight === 0 && this.queue.length === 0 && this.stream.pendingInput === 0) this.close();
  }

  private writeText(text: string): void {
    if (this.closed) return;
    this.transport.write(text);
    if (this.transport.pendingOutput > this.maxOutput) {
      this.log.warn('qmp.client_not_reading', { pendingOutput: this.transport.pendingOutput });
      this.close(false);
    }
  }

  private pull(): void {
    while (this.queue.length < MAX_QUEUED_REQUESTS) {
      const ev = this.stream.read();
      if (!ev) break;
      if (ev.kind === 'error') this.log.debug('qmp.parse_error', { message: ev.message });
      this.queue.push(ev);
    }
    const full = this.queue.length >= MAX_QUEUED_REQUESTS;
    if (full && !this.inputPaused) {
      this.inputPaused = true;
      this.transport.pauseInput();
    } else if (!full && this.inputPaused && this.stream.pendingInput === 0) {
      this.inputPaused = false;
      this.transport.resumeInput();
    }
    if (this.queue.length > 0) this.host.wake(this);
  }
}
