/**
 * The server side of the wire, without I/O: `ServerDecoder` turns the bytes a
 * client sends into frames (client flags, options, requests with their WRITE
 * payloads), and the encoders build every message the server sends.
 *
 * The decoder is pulled: the connection calls `next()` only when it is ready
 * for another frame, so a paused connection buffers at most what the socket
 * had already delivered. WRITE payloads stream straight into their own
 * buffer (or are sliced from the socket chunk when they arrived whole).
 */
import {
  CHUNK_HEADER_SIZE, ChunkType, Cmd, DEFAULT_MAX_PAYLOAD, EXTENDED_REQUEST_MAGIC, HandshakeFlag, IHAVEOPT_HI,
  IHAVEOPT_LO, OPTION_HEADER_SIZE, OPTION_REPLY_HEADER_SIZE, OPTION_REPLY_MAGIC_HI, OPTION_REPLY_MAGIC_LO,
  REQUEST_MAGIC, REQUEST_SIZE, ReplyFlag, SIMPLE_REPLY_MAGIC, SIMPLE_REPLY_SIZE, STRUCTURED_REPLY_MAGIC,
} from './constants.js';
import { NbdProtocolError } from './protocol-error.js';
import { readU64, RecvBuffer, writeU64 } from './recv-buffer.js';

export interface ClientFlagsFrame {
  kind: 'flags';
  flags: number;
}

export interface OptionFrame {
  kind: 'option';
  code: number;
  /** Declared data length. */
  length: number;
  /** The option data, or null when it was longer than the limit (and was skipped). */
  data: Buffer | null;
}

export interface RequestFrame {
  kind: 'request';
  flags: number;
  type: number;
  /** The cookie, kept as two opaque halves and echoed back unchanged. */
  cookieHi: number;
  cookieLo: number;
  /** Exact below 2^53; larger values only ever fail the range check. */
  offset: number;
  length: number;
  /** WRITE data; null for other commands and for oversized writes (drained). */
  payload: Buffer | null;
  /** A WRITE longer than the payload limit whose data was read and thrown away. */
  oversized: boolean;
}

export type ServerFrame = ClientFlagsFrame | OptionFrame | RequestFrame;

export interface ServerDecoderLimits {
  /** Longest option data kept; longer options are skipped and reported with data null. */
  maxOptionLength: number;
  /** Longest WRITE payload accepted. */
  maxPayload: number;
  /** WRITEs up to this length beyond maxPayload are drained; longer ones end the connection. */
  maxDrain: number;
}

export const DEFAULT_DECODER_LIMITS: ServerDecoderLimits = {
  maxOptionLength: 64 * 1024,
  maxPayload: DEFAULT_MAX_PAYLOAD,
  maxDrain: 64 * 1024 * 1024,
};

const EMPTY_PAYLOAD = Buffer.alloc(0);

const enum State {
  Flags,
  OptionHeader,
  OptionSkip,
  Request,
  Payload,
  Drain,
  Idle,
}

export class ServerDecoder {
  private readonly rb = new RecvBuffer();
  private state: State = State.Flags;
  /** The request whose payload is being received or drained. */
  private pendingRequest: RequestFrame | null = null;
  private pendingOption: OptionFrame | null = null;
  private sink: Buffer | null = null;
  private filled = 0;
  private remaining = 0;

  constructor(private readonly limits: ServerDecoderLimits = DEFAULT_DECODER_LIMITS) {}

  /** Bytes received but not yet parsed (bounded by the limits and one socket read). */
  get buffered(): number {
    return this.rb.length;
  }

  /** Switches from option haggling to requests; call after GO's ACK or EXPORT_NAME's reply. */
  startTransmission(): void {
    if (this.state !== State.OptionHeader) throw new Error('startTransmission outside option haggling');
    this.state = State.Request;
  }

  /** Ignores everything from now on (after DISC, or once the connection is doomed). */
  stop(): void {
    this.state = State.Idle;
    this.rb.clear();
    this.sink = null;
  }

  push(chunk: Buffer): void {
    let data = chunk;
    if (this.state === State.Payload) {
      const n = Math.min(this.remaining, data.length);
      data.copy(this.sink!, this.filled, 0, n);
      this.filled += n;
      this.remaining -= n;
      data = data.subarray(n);
    } else if (this.state === State.Drain || this.state === State.OptionSkip) {
      const n = Math.min(this.remaining, data.length);
      this.remaining -= n;
      data = data.subarray(n);
    } else if (this.state === State.Idle) {
      return;
    }
    this.rb.push(data);
  }

  /**
   * Where the next socket bytes may be read to directly: the unfilled rest
   * of the WRITE payload being received (nothing else is buffered then).
   * Report what arrived there with `pushDirect`.
   */
  directTarget(): Buffer | null {
    if (this.state !== State.Payload || this.remaining === 0 || this.rb.length > 0) return null;
    return this.sink!.subarray(this.filled, this.filled + this.remaining);
  }

  /** `n` bytes were read into the buffer `directTarget` returned. */
  pushDirect(n: number): void {
    if (this.state !== State.Payload) return; // stopped meanwhile
    this.filled += n;
    this.remaining -= n;
  }

  /** The next complete frame, or null until more bytes arrive. Throws NbdProtocolError. */
  next(): ServerFrame | null {
    const rb = this.rb;
    for (;;) {
      switch (this.state) {
        case State.Flags: {
          if (rb.length < 4) return null;
          const flags = rb.data.readUInt32BE(rb.pos);
          rb.skip(4);
          this.state = State.OptionHeader;
          return { kind: 'flags', flags };
        }
        case State.OptionHeader: {
          if (rb.length < OPTION_HEADER_SIZE) return null;
          const buf = rb.data;
          const at = rb.pos;
          if (buf.readUInt32BE(at) !== IHAVEOPT_HI || buf.readUInt32BE(at + 4) !== IHAVEOPT_LO) {
            throw new NbdProtocolError('bad option magic');
          }
          const code = buf.readUInt32BE(at + 8);
          const length = buf.readUInt32BE(at + 12);
          if (length <= this.limits.maxOptionLength) {
            if (rb.length < OPTION_HEADER_SIZE + length) return null;
            rb.skip(OPTION_HEADER_SIZE);
            return { kind: 'option', code, length, data: rb.take(length) };
          }
          rb.skip(OPTION_HEADER_SIZE);
          this.pendingOption = { kind: 'option', code, length, data: null };
          this.beginSkip(State.OptionSkip, length);
          continue;
        }
        case State.OptionSkip: {
          if (this.remaining > 0) return null;
          const frame = this.pendingOption!;
          this.pendingOption = null;
          this.state = State.OptionHeader;
          return frame;
        }
        case State.Request: {
          if (rb.length < REQUEST_SIZE) return null;
          const frame = this.parseRequest();
          if (frame.type !== Cmd.WRITE) return frame;
          if (frame.length === 0) {
            frame.payload = EMPTY_PAYLOAD;
            return frame;
          }
          if (frame.length > this.limits.maxPayload) {
            if (frame.length > this.limits.maxDrain) {
              throw new NbdProtocolError(`write of ${frame.length} bytes exceeds the ${this.limits.maxDrain}-byte limit`);
            }
            frame.oversized = true;
            this.pendingRequest = frame;
            this.beginSkip(State.Drain, frame.length);
            continue;
          }
          if (rb.length >= frame.length) {
            frame.payload = rb.take(frame.length);
            return frame;
          }
          const sink = Buffer.allocUnsafe(frame.length);
          this.filled = rb.copyTo(sink, 0, frame.length);
          this.remaining = frame.length - this.filled;
          this.sink = sink;
          frame.payload = sink;
          this.pendingRequest = frame;
          this.state = State.Payload;
          return null;
        }
        case State.Payload:
        case State.Drain: {
          if (this.remaining > 0) return null;
          const frame = this.pendingRequest!;
          this.pendingRequest = null;
          this.sink = null;
          this.state = State.Request;
          return frame;
        }
        case State.Idle:
          return null;
      }
    }
  }

  private beginSkip(state: State, length: number): void {
    const rb = this.rb;
    const n = Math.min(length, rb.length);
    rb.skip(n);
    this.remaining = length - n;
    this.state = state;
  }

  private parseRequest(): RequestFrame {
    const rb = this.rb;
    const buf = rb.data;
    const at = rb.pos;
    const magic = buf.readUInt32BE(at);
    if (magic !== REQUEST_MAGIC) {
      throw new NbdProtocolError(magic === EXTENDED_REQUEST_MAGIC
        ? 'extended request header without negotiation'
        : `bad request magic 0x${magic.toString(16)}`);
    }
    const frame: RequestFrame = {
      kind: 'request',
      flags: buf.readUInt16BE(at + 4),
      type: buf.readUInt16BE(at + 6),
      cookieHi: buf.readUInt32BE(at + 8),
      cookieLo: buf.readUInt32BE(at + 12),
      offset: readU64(buf, at + 16),
      length: buf.readUInt32BE(at + 24),
      payload: null,
      oversized: false,
    };
    rb.skip(REQUEST_SIZE);
    return frame;
  }
}

// ------------------------------------------------------------------ encoders

export const SERVER_HANDSHAKE_FLAGS = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES;

export function encodeGreeting(flags: number = SERVER_HANDSHAKE_FLAGS): Buffer {
  const buf = Buffer.allocUnsafe(18);
  buf.write('NBDMAGIC', 0, 'latin1');
  buf.write('IHAVEOPT', 8, 'latin1');
  buf.writeUInt16BE(flags, 16);
  return buf;
}

export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data?.length ?? 0;
  const buf = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + len);
  buf.writeUInt32BE(OPTION_REPLY_MAGIC_HI, 0);
  buf.writeUInt32BE(OPTION_REPLY_MAGIC_LO, 4);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(type >>> 0, 12);
  buf.writeUInt32BE(len, 16);
  if (data) data.copy(buf, OPTION_REPLY_HEADER_SIZE);
  return buf;
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags, and the 124 zeroes unless NO_ZEROES was agreed. */
export function encodeExportNameReply(size: number, txFlags: number, noZeroes: boolean): Buffer {
  const buf = Buffer.alloc(noZeroes ? 10 : 134);
  writeU64(buf, size, 0);
  buf.writeUInt16BE(txFlags, 8);
  return buf;
}

export function writeSimpleReply(buf: Buffer, at: number, error: number, cookieHi: number, cookieLo: number): void {
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  buf.writeUInt32BE(error, at + 4);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
}

export function encodeSimpleReply(error: number, cookieHi: number, cookieLo: number): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  writeSimpleReply(buf, 0, error, cookieHi, cookieLo);
  return buf;
}

export function writeChunkHeader(
  buf: Buffer, at: number, flags: number, type: number, cookieHi: number, cookieLo: number, length: number,
): void {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
  buf.writeUInt32BE(length, at + 16);
}

/** Room for an OFFSET_DATA chunk header plus its offset, ahead of the data. */
export const DATA_CHUNK_PREFIX = CHUNK_HEADER_SIZE + 8;

/** Fills in the header of an OFFSET_DATA chunk whose `dataLength` bytes follow at DATA_CHUNK_PREFIX. */
export function writeDataChunkPrefix(
  buf: Buffer, at: number, done: boolean, cookieHi: number, cookieLo: number, offset: number, dataLength: number,
): void {
  writeChunkHeader(buf, at, done ? ReplyFlag.DONE : 0, ChunkType.OFFSET_DATA, cookieHi, cookieLo, 8 + dataLength);
  writeU64(buf, offset, at + CHUNK_HEADER_SIZE);
}

export function encodeHoleChunk(done: boolean, cookieHi: number, cookieLo: number, offset: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 12);
  writeChunkHeader(buf, 0, done ? ReplyFlag.DONE : 0, ChunkType.OFFSET_HOLE, cookieHi, cookieLo, 12);
  writeU64(buf, offset, CHUNK_HEADER_SIZE);
  buf.writeUInt32BE(length, CHUNK_HEADER_SIZE + 8);
  return buf;
}

export function encodeNoneChunk(cookieHi: number, cookieLo: number): Buffer {
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_SIZE);
  writeChunkHeader(buf, 0, ReplyFlag.DONE, ChunkType.NONE, cookieHi, cookieLo, 0);
  return buf;
}

/** An ERROR chunk (always final here) carrying a human-readable message. */
export function encodeErrorChunk(cookieHi: number, cookieLo: number, error: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 1024), 'utf8');
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 6 + text.length);
  writeChunkHeader(buf, 0, ReplyFlag.DONE, ChunkType.ERROR, cookieHi, cookieLo, 6 + text.length);
  buf.writeUInt32BE(error, CHUNK_HEADER_SIZE);
  buf.writeUInt16BE(text.length, CHUNK_HEADER_SIZE + 4);
  text.copy(buf, CHUNK_HEADER_SIZE + 6);
  return buf;
}

/** A BLOCK_STATUS chunk: `extents` holds (length, flags) pairs. */
export function encodeBlockStatusChunk(
  done: boolean, cookieHi: number, cookieLo: number, contextId: number, extents: readonly number[],
): Buffer {
  const payload = 4 + extents.length * 4;
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + payload);
  writeChunkHeader(buf, 0, done ? ReplyFlag.DONE : 0, ChunkType.BLOCK_STATUS, cookieHi, cookieLo, payload);
  buf.writeUInt32BE(contextId, CHUNK_HEADER_SIZE);
  let at = CHUNK_HEADER_SIZE + 4;
  for (const v of extents) {
    buf.writeUInt32BE(v >>> 0, at);
    at += 4;
  }
  return buf;
}

