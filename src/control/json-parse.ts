/**
 * Parses one message's tokens into a value, with the error texts of QEMU's
 * JSON parser (qobject/json-parser.c). The first error wins, as in QEMU.
 */
import { newObject, QmpFloat, type QmpObject, type QmpValue } from './json-value.js';
import { decodedEnd, decodeLossy, decodeModUtf8, isValidCodepoint } from './utf8.js';

/** Token types, as the stream numbers them (see json-stream.ts). */
const T_LCURLY = 16;
const T_RCURLY = 17;
const T_LSQUARE = 18;
const T_RSQUARE = 19;
const T_COLON = 20;
const T_COMMA = 21;
const T_INTEGER = 22;
const T_FLOAT = 23;
const T_KEYWORD = 24;
const T_STRING = 25;

export interface TokenSource {
  readonly bytes: Buffer;
  readonly types: Uint8Array;
  readonly starts: Uint32Array;
  readonly ends: Uint32Array;
  readonly count: number;
}

export class JsonParseError extends Error {
  constructor(detail: string) {
    super(`JSON parse error, ${detail}`);
    this.name = 'JsonParseError';
  }
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;

export function parseTokens(src: TokenSource): QmpValue {
  return new Parser(src).value();
}

class Parser {
  private pos = 0;

  constructor(private readonly src: TokenSource) {}

  private peek(): number {
    if (this.pos >= this.src.count) throw new JsonParseError('premature EOI');
    return this.src.types[this.pos]!;
  }

  value(): QmpValue {
    switch (this.peek()) {
      case T_LCURLY: return this.object();
      case T_LSQUARE: return this.array();
      case T_INTEGER: return this.integer(this.pos++);
      case T_FLOAT: return new QmpFloat(Number(this.text(this.pos++)));
      case T_STRING: return this.string(this.pos++);
      case T_KEYWORD: return this.keyword(this.pos++);
      default: throw new JsonParseError('expecting value');
    }
  }

  private object(): QmpObject {
    this.pos++;
    const dict = newObject();
    if (this.peek() === T_RCURLY) {
      this.pos++;
      return dict;
    }
    this.pair(dict);
    for (;;) {
      const t = this.peek();
      this.pos++;
      if (t === T_RCURLY) return dict;
      if (t !== T_COMMA) throw new JsonParseError('expected separator in dict');
      this.pair(dict);
    }
  }

  private pair(dict: QmpObject): void {
    this.peek();
    const key = this.value();
    if (typeof key !== 'string') throw new JsonParseError('key is not a string in object');
    const t = this.peek();
    this.pos++;
    if (t !== T_COLON) throw new JsonParseError('missing : in object pair');
    const v = this.value();
    if (Object.prototype.hasOwnProperty.call(dict, key)) throw new JsonParseError('duplicate key');
    dict[key] = v;
  }

  private array(): QmpValue[] {
    this.pos++;
    const list: QmpValue[] = [];
    if (this.peek() === T_RSQUARE) {
      this.pos++;
      return list;
    }
    list.push(this.value());
    for (;;) {
      const t = this.peek();
      this.pos++;
      if (t === T_RSQUARE) return list;
      if (t !== T_COMMA) throw new JsonParseError('expected separator in list');
      list.push(this.value());
    }
  }

  private text(i: number): string {
    return this.src.bytes.toString('latin1', this.src.starts[i]!, this.src.ends[i]!);
  }

  private keyword(i: number): QmpValue {
    const word = this.text(i);
    if (word === 'true') return true;
    if (word === 'false') return false;
    if (word === 'null') return null;
    throw new JsonParseError(`invalid keyword '${word}'`);
  }

  /** int64 when it fits, else uint64, else a double, as QEMU does. */
  private integer(i: number): QmpValue {
    const text = this.text(i);
    if (text.length <= 15) {
      const n = Number(text);
      return n === 0 ? 0 : n;
    }
    const big = BigInt(text);
    if (big >= INT64_MIN && big <= INT64_MAX) {
      const n = Number(big);
      return Number.isSafeInteger(n) ? n : big;
    }
    if (big > 0n && big <= UINT64_MAX) return big;
    return new QmpFloat(Number(text));
  }

  private string(i: number): string {
    const bytes = this.src.bytes;
    const start = this.src.starts[i]!;
    const end = this.src.ends[i]! - 1;
    let p = start + 1;
    // Fast path: printable ASCII without escapes.
    let q = p;
    while (q < end) {
      const b = bytes[q]!;
      if (b >= 0x80 || b === 0x5c) break;
      q++;
    }
    let out = bytes.toString('latin1', p, q);
    p = q;
    while (p < end) {
      const b = bytes[p]!;
      if (b === 0x5c) {
        const escStart = p;
        p += 2;
        switch (bytes[escStart + 1]) {
          case 0x22: out += '"'; break;
          case 0x27: out += "'"; break;
          case 0x5c: out += '\\'; break;
          case 0x2f: out += '/'; break;
          case 0x62: out += '\b'; break;
          case 0x66: out += '\f'; break;
          case 0x6e: out += '\n'; break;
          case 0x72: out += '\r'; break;
          case 0x74: out += '\t'; break;
          case 0x75: {
            let cp = hex4(bytes, p, end + 1);
            p += 4;
            if (cp >= 0xd800 && cp <= 0xdbff && bytes[p] === 0x5c && bytes[p + 1] === 0x75) {
              const low = hex4(bytes, p + 2, end + 1);
              if (low >= 0xdc00 && low <= 0xdfff) {
                cp = 0x10000 + ((cp & 0x3ff) << 10) + (low & 0x3ff);
                p += 6;
              } else {
                cp = -1;
              }
            }
            if (!isValidCodepoint(cp)) {
              // QEMU prints the escape as written, up to the end of the token.
              const shown = decodeLossy(bytes, escStart, Math.min(p, end + 1));
              throw new JsonParseError(`${shown} is not a valid Unicode character`);
            }
            out += String.fromCodePoint(cp);
            break;
          }
          default:
            throw new JsonParseError('invalid escape sequence in string');
        }
      } else if (b < 0x80) {
        out += String.fromCharCode(b);
        p++;
      } else {
        const cp = decodeModUtf8(bytes, p, end);
        if (cp < 0) throw new JsonParseError('invalid UTF-8 sequence in string');
        out += String.fromCodePoint(cp);
        p = decodedEnd;
      }
    }
    return out;
  }
}

/** Four hex digits at `at`, or -1. Bytes at or past `limit` count as the string's end. */
function hex4(bytes: Uint8Array, at: number, limit: number): number {
  let cp = 0;
  for (let k = 0; k < 4; k++) {
    const c = at + k < limit ? bytes[at + k]! : 0;
    let d: number;
    if (c >= 0x30 && c <= 0x39) d = c - 0x30;
    else if (c >= 0x61 && c <= 0x66) d = c - 0x57;
    else if (c >= 0x41 && c <= 0x46) d = c - 0x37;
    else return -1;
    cp = cp * 16 + d;
  }
  return cp;
}
