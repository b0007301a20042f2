/**
 * A sans-I/O reader of a stream of JSON messages, with the behaviour of
 * QEMU's JSON lexer and streamer (qobject/json-lexer.c, json-streamer.c):
 *
 * - tokens are recognised by a byte-level state machine; a byte that cannot
 *   continue a token is a lexical error ("stray"), after which input is
 *   skipped up to the next structural character, control character or
 *   0xFE/0xFF, so a client can resynchronise by sending any of those;
 * - a message ends when braces and brackets balance (or go negative); only
 *   then is it parsed, so syntax errors are reported once per message;
 * - limits on message size, token count and nesting keep a hostile client
 *   from making the server allocate without bound.
 *
 * QEMU's single-quoted strings and `\'` escape are accepted; its `%`
 * interpolation (an internal C API) is not. Tokens are kept as offsets into
 * one buffer of message bytes, so memory stays close to the message size.
 */
import { parseTokens, type TokenSource } from './json-parse.js';
import type { QmpValue } from './json-value.js';
import { decodeLossy } from './utf8.js';

export interface JsonLimits {
  /** Bytes of token text in one message (QEMU: 64 MiB). */
  maxMessageBytes: number;
  /** Tokens in one message (QEMU: 2 Mi). */
  maxTokens: number;
  /** Open braces plus brackets (QEMU: 1024). */
  maxNesting: number;
}

export const QEMU_JSON_LIMITS: Readonly<JsonLimits> = {
  maxMessageBytes: 64 * 1024 * 1024,
  maxTokens: 2 * 1024 * 1024,
  maxNesting: 1024,
};

export type JsonEvent = { kind: 'value'; value: QmpValue } | { kind: 'error'; message: string };

// Lexer states. ERROR must be 0: the transition table defaults to it.
const S_ERROR = 0;
const S_RECOVERY = 1;
const S_DQ_ESCAPE = 2;
const S_DQ = 3;
const S_SQ_ESCAPE = 4;
const S_SQ = 5;
const S_ZERO = 6;
const S_EXP_DIGITS = 7;
const S_EXP_SIGN = 8;
const S_EXP_E = 9;
const S_MANTISSA = 10;
const S_MANTISSA_DIGITS = 11;
const S_DIGITS = 12;
const S_SIGN = 13;
const S_KEYWORD = 14;
const S_START = 15;
const STATES = 16;

/** Token types; also terminal states of the lexer. */
export const Tok = {
  LCURLY: 16,
  RCURLY: 17,
  LSQUARE: 18,
  RSQUARE: 19,
  COLON: 20,
  COMMA: 21,
  INTEGER: 22,
  FLOAT: 23,
  KEYWORD: 24,
  STRING: 25,
} as const;

/** The transition does not consume the byte: it is looked at again in the next state. */
const LOOKAHEAD = 0x80;

const TABLE = buildTable();

function buildTable(): Uint8Array {
  const t = new Uint8Array(STATES * 256);
  const set = (state: number, from: number, to: number, next: number): void => {
    for (let c = from; c <= to; c++) t[state * 256 + c] = next;
  };
  const ch = (c: string): number => c.charCodeAt(0);
  const one = (state: number, c: string, next: number): void => set(state, ch(c), ch(c), next);
  const terminal = (state: number, token: number): void => set(state, 0, 255, token | LOOKAHEAD);

  set(S_RECOVERY, 0x00, 0x1f, S_START | LOOKAHEAD);
  set(S_RECOVERY, 0x20, 0xfd, S_RECOVERY);
  set(S_RECOVERY, 0xfe, 0xff, S_START | LOOKAHEAD);
  one(S_RECOVERY, '\t', S_RECOVERY);
  for (const c of '[]{}:,') one(S_RECOVERY, c, S_START | LOOKAHEAD);

  set(S_DQ_ESCAPE, 0x20, 0xfd, S_DQ);
  set(S_DQ, 0x20, 0xfd, S_DQ);
  one(S_DQ, '\\', S_DQ_ESCAPE);
  one(S_DQ, '"', Tok.STRING);
  set(S_SQ_ESCAPE, 0x20, 0xfd, S_SQ);
  set(S_SQ, 0x20, 0xfd, S_SQ);
  one(S_SQ, '\\', S_SQ_ESCAPE);
  one(S_SQ, "'", Tok.STRING);

  terminal(S_ZERO, Tok.INTEGER);
  set(S_ZERO, ch('0'), ch('9'), S_ERROR);
  one(S_ZERO, '.', S_MANTISSA);

  terminal(S_EXP_DIGITS, Tok.FLOAT);
  set(S_EXP_DIGITS, ch('0'), ch('9'), S_EXP_DIGITS);
  set(S_EXP_SIGN, ch('0'), ch('9'), S_EXP_DIGITS);
  one(S_EXP_E, '-', S_EXP_SIGN);
  one(S_EXP_E, '+', S_EXP_SIGN);
  set(S_EXP_E, ch('0'), ch('9'), S_EXP_DIGITS);

  terminal(S_MANTISSA_DIGITS, Tok.FLOAT);
  set(S_MANTISSA_DIGITS, ch('0'), ch('9'), S_MANTISSA_DIGITS);
  one(S_MANTISSA_DIGITS, 'e', S_EXP_E);
  one(S_MANTISSA_DIGITS, 'E', S_EXP_E);
  set(S_MANTISSA, ch('0'), ch('9'), S_MANTISSA_DIGITS);

  terminal(S_DIGITS, Tok.INTEGER);
  set(S_DIGITS, ch('0'), ch('9'), S_DIGITS);
  one(S_DIGITS, 'e', S_EXP_E);
  one(S_DIGITS, 'E', S_EXP_E);
  one(S_DIGITS, '.', S_MANTISSA);

  one(S_SIGN, '0', S_ZERO);
  set(S_SIGN, ch('1'), ch('9'), S_DIGITS);

  terminal(S_KEYWORD, Tok.KEYWORD);
  set(S_KEYWORD, ch('a'), ch('z'), S_KEYWORD);

  one(S_START, '"', S_DQ);
  one(S_START, "'", S_SQ);
  one(S_START, '0', S_ZERO);
  set(S_START, ch('1'), ch('9'), S_DIGITS);
  one(S_START, '-', S_SIGN);
  one(S_START, '{', Tok.LCURLY);
  one(S_START, '}', Tok.RCURLY);
  one(S_START, '[', Tok.LSQUARE);
  one(S_START, ']', Tok.RSQUARE);
  one(S_START, ',', Tok.COMMA);
  one(S_START, ':', Tok.COLON);
  set(S_START, ch('a'), ch('z'), S_KEYWORD);
  for (const c of ' \t\r\n') one(S_START, c, S_START);
  return t;
}

const INITIAL_BYTES = 4096;
const INITIAL_TOKENS = 256;

export class JsonMessageStream implements TokenSource {
  private readonly limits: JsonLimits;

  // Input not yet lexed.
  private readonly input: Buffer[] = [];
  private inputPos = 0;
  private inputBytes = 0;

  // The message being collected: token bytes, and each token's type and extent.
  bytes: Buffer = Buffer.allocUnsafe(INITIAL_BYTES);
  private length = 0;
  types = new Uint8Array(INITIAL_TOKENS);
  starts = new Uint32Array(INITIAL_TOKENS);
  ends = new Uint32Array(INITIAL_TOKENS);
  count = 0;

  private state = S_START;
  private tokenStart = 0;
  private braces = 0;
  private brackets = 0;
  private readonly out: JsonEvent[] = [];

  constructor(limits: Partial<JsonLimits> = {}) {
    this.limits = { ...QEMU_JSON_LIMITS, ...limits };
  }

  /** Bytes written but not yet lexed (input held back while the reader is busy). */
  get pendingInput(): number {
    return this.inputBytes;
  }

  /** Bytes of the incomplete message collected so far. */
  get collectedBytes(): number {
    return this.length;
  }

  write(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.input.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
    this.inputBytes += chunk.length;
  }

  /** The next complete message or error, or undefined when more input is needed. */
  read(): JsonEvent | undefined {
    while (this.out.length === 0 && this.input.length > 0) {
      const chunk = this.input[0]!;
      let i = this.inputPos;
      while (i < chunk.length && this.out.length === 0) this.feedByte(chunk[i++]!);
      this.inputBytes -= i - this.inputPos;
      if (i === chunk.length) {
        this.input.shift();
        this.inputPos = 0;
      } else {
        this.inputPos = i;
      }
    }
    return this.out.shift();
  }

  /** Reads every event the buffered input yields. */
  readAll(): JsonEvent[] {
    const events: JsonEvent[] = [];
    for (let e = this.read(); e; e = this.read()) events.push(e);
    return events;
  }

  private feedByte(c: number): void {
    let consumed = false;
    while (!consumed) {
      let next = TABLE[this.state * 256 + c]!;
      consumed = (next & LOOKAHEAD) === 0;
      next &= ~LOOKAHEAD;
      if (consumed) this.append(c);
      if (next >= Tok.LCURLY) {
        this.token(next);
        this.length = this.tokenStart;
        next = S_START;
      } else if (next === S_START) {
        this.length = this.tokenStart;
      } else if (next === S_ERROR) {
        this.strayToken();
        this.length = this.tokenStart;
        next = S_RECOVERY;
      } else if (next === S_RECOVERY) {
        this.length = this.tokenStart;
      }
      this.state = next;
    }
    // QEMU cuts a single token that outgrows the message limit and starts over.
    if (this.length - this.tokenStart > this.limits.maxMessageBytes) {
      this.fail('JSON token size limit exceeded');
      this.state = S_START;
    }
  }

  private append(c: number): void {
    if (this.length === this.bytes.length) {
      const grown = Buffer.allocUnsafe(this.bytes.length * 2);
      this.bytes.copy(grown, 0, 0, this.length);
      this.bytes = grown;
    }
    this.bytes[this.length++] = c;
  }

  /** A complete token sits at [tokenStart, length). */
  private token(type: number): void {
    switch (type) {
      case Tok.LCURLY: this.braces++; break;
      case Tok.RCURLY: this.braces--; break;
      case Tok.LSQUARE: this.brackets++; break;
      case Tok.RSQUARE: this.brackets--; break;
    }
    const { maxMessageBytes, maxTokens, maxNesting } = this.limits;
    if (this.length + 1 > maxMessageBytes) return this.fail('JSON token size limit exceeded');
    if (this.count + 1 > maxTokens) return this.fail('JSON token count limit exceeded');
    if (this.braces + this.brackets > maxNesting) return this.fail('JSON nesting depth limit exceeded');

    if (this.count === this.types.length) this.growTokens();
    this.types[this.count] = type;
    this.starts[this.count] = this.tokenStart;
    this.ends[this.count] = this.length;
    this.count++;
    this.tokenStart = this.length;

    if ((this.braces > 0 || this.brackets > 0) && this.braces >= 0 && this.brackets >= 0) return;
    let event: JsonEvent;
    try {
      event = { kind: 'value', value: parseTokens(this) };
    } catch (err) {
      event = { kind: 'error', message: (err as Error).message };
    }
    this.reset();
    this.out.push(event);
  }

  private strayToken(): void {
    this.fail(`JSON parse error, stray '${decodeLossy(this.bytes, this.tokenStart, this.length)}'`);
  }

  private fail(message: string): void {
    this.reset();
    this.out.push({ kind: 'error', message });
  }

  private reset(): void {
    this.braces = 0;
    this.brackets = 0;
    this.count = 0;
    this.length = 0;
    this.tokenStart = 0;
    // Give back what one large message made us allocate.
    if (this.bytes.length > 16 * INITIAL_BYTES) this.bytes = Buffer.allocUnsafe(INITIAL_BYTES);
    if (this.types.length > 16 * INITIAL_TOKENS) {
      this.types = new Uint8Array(INITIAL_TOKENS);
      this.starts = new Uint32Array(INITIAL_TOKENS);
      this.ends = new Uint32Array(INITIAL_TOKENS);
    }
  }

  private growTokens(): void {
    const n = this.types.length * 2;
    const types = new Uint8Array(n);
    const starts = new Uint32Array(n);
    const ends = new Uint32Array(n);
    types.set(this.types);
    starts.set(this.starts);
    ends.set(this.ends);
    this.types = types;
    this.starts = starts;
    this.ends = ends;
  }
}

/**
 * Parses one complete JSON text (a command-line argument, a test fixture)
 * with QEMU's parser. Throws with QEMU's message when it is not exactly one
 * valid value.
 */
export function parseJsonText(text: string | Uint8Array): QmpValue {
  const stream = new JsonMessageStream();
  stream.write(typeof text === 'string' ? Buffer.from(text, 'utf8') : text);
  // A trailing space ends a number or keyword that the lexer is still reading.
  stream.write(Buffer.from(' '));
  const events = stream.readAll();
  if (events.length === 0 || stream.collectedBytes > 0) throw new Error('JSON parse error, premature end of input');
  const first = events[0]!;
  if (first.kind === 'error') throw new Error(first.message);
  if (events.length > 1) throw new Error('JSON parse error, more than one value');
  return first.value;
}
