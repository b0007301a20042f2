/**
 * The client side of the wire, without I/O: `ClientDecoder` turns what a
 * server sends into frames (greeting, option replies, the EXPORT_NAME
 * answer, simple replies and structured chunks), and the encoders build
 * what the client sends.
 *
 * Read data never lands in an intermediate buffer: the decoder asks its
 * `ReplyTargets` where the bytes of a simple READ reply or an OFFSET_DATA
 * chunk belong and copies them straight there. An unknown cookie or a chunk
 * outside its request is a protocol error, which ends the connection.
 */
import {
  CHUNK_HEADER_SIZE, ChunkType, IHAVEOPT_HI, IHAVEOPT_LO, OPTION_HEADER_SIZE, OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC_HI, OPTION_REPLY_MAGIC_LO, REQUEST_MAGIC, REQUEST_SIZE, SIMPLE_REPLY_MAGIC, SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './constants.js';
import { NbdProtocolError } from './protocol-error.js';
import { readU64, RecvBuffer, writeU64 } from './recv-buffer.js';

export interface GreetingFrame {
  kind: 'greeting';
  flags: number;
}

export interface OptionReplyFrame {
  kind: 'option-reply';
  option: number;
  type: number;
  data: Buffer;
}

export interface ExportInfoFrame {
  kind: 'export-info';
  size: number;
  flags: number;
}

export interface SimpleReplyFrame {
  kind: 'simple';
  error: number;
  cookieHi: number;
  cookieLo: number;
}

export interface ChunkFrame {
  kind: 'chunk';
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  /** OFFSET_DATA/OFFSET_HOLE: the range covered (data already copied to its target). */
  offset: number;
  length: number;
  /** The payload of every other chunk type. */
  payload: Buffer | null;
}

export type ClientFrame = GreetingFrame | OptionReplyFrame | ExportInfoFrame | SimpleReplyFrame | ChunkFrame;

/** Where read data goes; the connection knows its requests, the decoder does not. */
export interface ReplyTargets {
  /**
   * For a successful simple reply: the buffer receiving the READ data, null
   * when the cookie is a request without data, undefined for an unknown cookie.
   */
  simpleTarget(cookieHi: number, cookieLo: number): Buffer | null | undefined;
  /** For OFFSET_DATA: where `length` bytes at export `offset` go, or undefined if that is not within the request. */
  dataTarget(cookieHi: number, cookieLo: number, offset: number, length: number): Buffer | undefined;
}

export interface ClientDecoderLimits {
  maxOptionReply: number;
  /** Largest non-data chunk payload (block status extents, error messages). */
  maxChunkPayload: number;
}

export const DEFAULT_CLIENT_LIMITS: ClientDecoderLimits = {
  maxOptionReply: 1024 * 1024,
  maxChunkPayload: 16 * 1024 * 1024,
};

const enum State {
  Greeting,
  OptionReply,
  ExportInfo,
  Reply,
  Data,
  ChunkPayload,
  Idle,
}

export class ClientDecoder {
  private readonly rb = new RecvBuffer();
  private state: State = State.Greeting;
  private exportInfoLength = 0;
  private sink: Buffer | null = null;
  private filled = 0;
  private pending: SimpleReplyFrame | ChunkFrame | null = null;

  constructor(private readonly targets: ReplyTargets, private readonly limits: ClientDecoderLimits = DEFAULT_CLIENT_LIMITS) {}

  /** After sending NBD_OPT_EXPORT_NAME: the next thing is size + flags (+ 124 zeroes). */
  expectExportInfo(noZeroes: boolean): void {
    this.state = State.ExportInfo;
    this.exportInfoLength = noZeroes ? 10 : 134;
  }

  startTransmission(): void {
    this.state = State.Reply;
  }

  stop(): void {
    this.state = State.Idle;
    this.rb.clear();
    this.sink = null;
  }

  /**
   * Adds received bytes. A `transient` chunk (a reused read buffer) must be
   * followed, once `next()` has returned null, by `detach()` before the
   * buffer is reused.
   */
  push(chunk: Buffer, transient = false): void {
    let data = chunk;
    if (this.state === State.Data) {
      const n = Math.min(this.sink!.length - this.filled, data.length);
      data.copy(this.sink!, this.filled, 0, n);
      this.filled += n;
      data = data.subarray(n);
    } else if (this.state === State.Idle) {
      return;
    }
    this.rb.push(data, transient);
  }

  detach(): void {
    this.rb.detach();
  }

  next(): ClientFrame | null {
    const rb = this.rb;
    for (;;) {
      switch (this.state) {
        case State.Greeting: {
          if (rb.length < 18) return null;
          const b = rb.data;
          const at = rb.pos;
          if (b.toString('latin1', at, at + 8) !== 'NBDMAGIC') throw new NbdProtocolError('not an NBD server (bad magic)');
          if (b.readUInt32BE(at + 8) !== IHAVEOPT_HI || b.readUInt32BE(at + 12) !== IHAVEOPT_LO) {
            throw new NbdProtocolError('server uses oldstyle negotiation, which is not supported');
          }
          const flags = b.readUInt16BE(at + 16);
          rb.skip(18);
          this.state = State.OptionReply;
          return { kind: 'greeting', flags };
        }
        case State.OptionReply: {
          if (rb.length < OPTION_REPLY_HEADER_SIZE) return null;
          const b = rb.data;
          const at = rb.pos;
          if (b.readUInt32BE(at) !== OPTION_REPLY_MAGIC_HI || b.readUInt32BE(at + 4) !== OPTION_REPLY_MAGIC_LO) {
            throw new NbdProtocolError('bad option reply magic');
          }
          const length = b.readUInt32BE(at + 16);
          if (length > this.limits.maxOptionReply) throw new NbdProtocolError(`option reply of ${length} bytes is too long`);
          if (rb.length < OPTION_REPLY_HEADER_SIZE + length) return null;
          const option = b.readUInt32BE(at + 8);
          const type = b.readUInt32BE(at + 12);
          rb.skip(OPTION_REPLY_HEADER_SIZE);
          return { kind: 'option-reply', option, type, data: rb.take(length) };
        }
        case State.ExportInfo: {
          if (rb.length < this.exportInfoLength) return null;
          const size = readU64(rb.data, rb.pos);
          const flags = rb.data.readUInt16BE(rb.pos + 8);
          rb.skip(this.exportInfoLength);
          this.state = State.Reply;
          return { kind: 'export-info', size, flags };
        }
        case State.Reply: {
          if (rb.length < 4) return null;
          const magic = rb.data.readUInt32BE(rb.pos);
          if (magic === SIMPLE_REPLY_MAGIC) {
            const frame = this.simpleReply();
            if (frame) return frame;
            if (this.state === State.Reply) return null;
            continue;
          }
          if (magic === STRUCTURED_REPLY_MAGIC) {
            const frame = this.chunk();
            if (frame) return frame;
            if (this.state === State.Reply) return null;
            continue;
          }
          throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16)}`);
        }
        case State.Data: {
          if (this.filled < this.sink!.length) return null;
          const frame = this.pending!;
          this.pending = null;
          this.sink = null;
          this.state = State.Reply;
          return frame;
        }
        case State.ChunkPayload: {
          const frame = this.pending as ChunkFrame;
          const need = frame.length;
          if (rb.length < need) return null;
          const payload = rb.take(need);
          this.pending = null;
          this.state = State.Reply;
          if (frame.type === ChunkType.OFFSET_HOLE) {
            frame.offset = readU64(payload, 0);
            frame.length = payload.readUInt32BE(8);
          } else {
            frame.payload = payload;
          }
          return frame;
        }
        case State.Idle:
          return null;
      }
    }
  }

  /** Returns the frame when complete, or null after switching to streaming its data. */
  private simpleReply(): SimpleReplyFrame | null {
    const rb = this.rb;
    if (rb.length < SIMPLE_REPLY_SIZE) return null;
    const b = rb.data;
    const at = rb.pos;
    const frame: SimpleReplyFrame = {
      kind: 'simple',
      error: b.readUInt32BE(at + 4),
      cookieHi: b.readUInt32BE(at + 8),
      cookieLo: b.readUInt32BE(at + 12),
    };
    const target = this.targets.simpleTarget(frame.cookieHi, frame.cookieLo);
    if (target === undefined) throw new NbdProtocolError('reply for an unknown cookie');
    rb.skip(SIMPLE_REPLY_SIZE);
    if (frame.error !== 0 || target === null || target.length === 0) return frame;
    this.startData(frame, target);
    return null;
  }

  private chunk(): ChunkFrame | null {
    const rb = this.rb;
    if (rb.length < CHUNK_HEADER_SIZE) return null;
    const b = rb.data;
    const at = rb.pos;
    const type = b.readUInt16BE(at + 6);
    const length = b.readUInt32BE(at + 16);
    const frame: ChunkFrame = {
      kind: 'chunk',
      flags: b.readUInt16BE(at + 4),
      type,
      cookieHi: b.readUInt32BE(at + 8),
      cookieLo: b.readUInt32BE(at + 12),
      offset: 0,
      length: 0,
      payload: null,
    };
    if (type === ChunkType.OFFSET_DATA) {
      if (length < 9) throw new NbdProtocolError(`OFFSET_DATA chunk of ${length} bytes`);
      if (rb.length < CHUNK_HEADER_SIZE + 8) return null;
      frame.offset = readU64(b, at + CHUNK_HEADER_SIZE);
      frame.length = length - 8;
      const target = this.targets.dataTarget(frame.cookieHi, frame.cookieLo, frame.offset, frame.length);
      if (target === undefined) throw new NbdProtocolError('OFFSET_DATA chunk outside its request');
      rb.skip(CHUNK_HEADER_SIZE + 8);
      this.startData(frame, target);
      return null;
    }
    if (length > this.limits.maxChunkPayload) throw new NbdProtocolError(`reply chunk of ${length} bytes is too long`);
    rb.skip(CHUNK_HEADER_SIZE);
    if (type === ChunkType.OFFSET_HOLE && length !== 12) throw new NbdProtocolError(`OFFSET_HOLE chunk of ${length} bytes`);
    frame.length = length;
    this.pending = frame;
    this.state = State.ChunkPayload;
    return null;
  }

  private startData(frame: SimpleReplyFrame | ChunkFrame, target: Buffer): void {
    this.pending = frame;
    this.sink = target;
    this.filled = this.rb.copyTo(target, 0, target.length);
    this.state = State.Data;
  }
}

// ------------------------------------------------------------------ encoders

export function encodeClientFlags(flags: number): Buffer {
  const buf = Buffer.allocUnsafe(4);
  buf.writeUInt32BE(flags, 0);
  return buf;
}

export function encodeOption(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.allocUnsafe(OPTION_HEADER_SIZE + data.length);
  buf.writeUInt32BE(IHAVEOPT_HI, 0);
  buf.writeUInt32BE(IHAVEOPT_LO, 4);
  buf.writeUInt32BE(code, 8);
  buf.writeUInt32BE(data.length, 12);
  data.copy(buf, OPTION_HEADER_SIZE);
  return buf;
}

/** INFO/GO data: the export name and the info types requested. */
export function encodeInfoRequest(name: string, infos: readonly number[]): Buffer {
  const raw = Buffer.from(name, 'utf8');
  const buf = Buffer.allocUnsafe(4 + raw.length + 2 + infos.length * 2);
  buf.writeUInt32BE(raw.length, 0);
  raw.copy(buf, 4);
  let at = 4 + raw.length;
  buf.writeUInt16BE(infos.length, at);
  at += 2;
  for (const i of infos) {
    buf.writeUInt16BE(i, at);
    at += 2;
  }
  return buf;
}

/** LIST/SET_META_CONTEXT data: the export name and the queries. */
export function encodeMetaContextRequest(name: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const raw = Buffer.from(name, 'utf8');
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(raw.length, 0);
  parts.push(head, raw);
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const q of queries) {
    const text = Buffer.from(q, 'utf8');
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(text.length, 0);
    parts.push(len, text);
  }
  return Buffer.concat(parts);
}

export function writeRequest(
  buf: Buffer, at: number, flags: number, type: number, cookieHi: number, cookieLo: number, offset: number, length: number,
): void {
  buf.writeUInt32BE(REQUEST_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
  writeU64(buf, offset, at + 16);
  buf.writeUInt32BE(length, at + 24);
}

export function encodeRequest(flags: number, type: number, cookieHi: number, cookieLo: number, offset: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(REQUEST_SIZE);
  writeRequest(buf, 0, flags, type, cookieHi, cookieLo, offset, length);
  return buf;
}
