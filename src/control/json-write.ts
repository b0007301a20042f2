/**
 * Serialises values the way QEMU's JSON writer does, so that a client
 * comparing our output with QEMU's sees the same bytes:
 *
 * - object members come out in QEMU's QDict iteration order (bucket order
 *   of its hash, newest first within a bucket), which is why QEMU prints
 *   `{"return": ..., "id": ...}` but `{"id": ..., "error": ...}`;
 * - strings are pure ASCII: everything outside 0x20-0x7E is \uXXXX with
 *   upper-case hex, invalid text becomes U+FFFD;
 * - floats are printed with C's `%.17g`.
 *
 * Deliberate difference: QEMU prints non-finite doubles as `inf`/`nan`,
 * which is not JSON; we print `null`.
 */
import { QmpFloat } from './json-value.js';
import { encodeModUtf8 } from './utf8.js';

export interface WriteOptions {
  /** 'qdict' (default) orders object members as QEMU prints them; 'insertion' keeps the caller's order. */
  order?: 'qdict' | 'insertion';
}

export function writeJson(value: unknown, options: WriteOptions = {}): string {
  return write(value, options.order === 'insertion');
}

function write(v: unknown, keepOrder: boolean): string {
  if (v === null || v === undefined) return 'null';
  switch (typeof v) {
    case 'boolean': return v ? 'true' : 'false';
    case 'string': return quote(v);
    case 'bigint': return v.toString();
    case 'number': return Number.isSafeInteger(v) ? String(v) : formatDouble(v);
    case 'object': break;
    default: throw new TypeError(`cannot serialise a ${typeof v} as JSON`);
  }
  if (v instanceof QmpFloat) return formatDouble(v.value);
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    let out = '[';
    for (let i = 0; i < v.length; i++) out += (i > 0 ? ', ' : '') + write(v[i], keepOrder);
    return `${out}]`;
  }
  const obj = v as Record<string, unknown>;
  const present = Object.keys(obj).filter((k) => obj[k] !== undefined);
  const keys = keepOrder ? present : qdictOrder(present);
  if (keys.length === 0) return '{}';
  let out = '{';
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i]!;
    out += `${i > 0 ? ', ' : ''}${quote(k)}: ${write(obj[k], keepOrder)}`;
  }
  return `${out}}`;
}

const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/** A JSON string literal in QEMU's escaping. */
export function quote(s: string): string {
  if (PLAIN.test(s)) return `"${s}"`;
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    let cp = s.charCodeAt(i);
    if (cp >= 0xd800 && cp <= 0xdbff && i + 1 < s.length) {
      const low = s.charCodeAt(i + 1);
      if (low >= 0xdc00 && low <= 0xdfff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
        i++;
      }
    }
    switch (cp) {
      case 0x22: out += '\\"'; continue;
      case 0x5c: out += '\\\\'; continue;
      case 0x08: out += '\\b'; continue;
      case 0x0c: out += '\\f'; continue;
      case 0x0a: out += '\\n'; continue;
      case 0x0d: out += '\\r'; continue;
      case 0x09: out += '\\t'; continue;
    }
    if (cp >= 0x20 && cp < 0x7f) {
      out += String.fromCharCode(cp);
      continue;
    }
    const lone = cp >= 0xd800 && cp <= 0xdfff;
    const nonchar = (cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) === 0xfffe;
    if (lone || nonchar) cp = 0xfffd;
    if (cp > 0xffff) {
      out += `\\u${hex4(0xd800 + ((cp - 0x10000) >> 10))}\\u${hex4(0xdc00 + ((cp - 0x10000) & 0x3ff))}`;
    } else {
      out += `\\u${hex4(cp)}`;
    }
  }
  return `${out}"`;
}

function hex4(n: number): string {
  return n.toString(16).toUpperCase().padStart(4, '0');
}

// ----------------------------------------------------------- QDict order

const BUCKETS = 512;
const bucketCache = new Map<string, number>();

/** QEMU's tdb_hash over the key's bytes (modified UTF-8), reduced to a QDict bucket. */
export function qdictBucket(key: string): number {
  let b = bucketCache.get(key);
  if (b !== undefined) return b;
  const data = encodeModUtf8(key);
  let value = Math.imul(0x238f13af, data.length) >>> 0;
  for (let i = 0; i < data.length; i++) {
    value = (value + ((data[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  }
  b = ((Math.imul(1103515243, value) + 12345) >>> 0) % BUCKETS;
  if (bucketCache.size < 4096) bucketCache.set(key, b);
  return b;
}

/** Keys in the order QEMU iterates a QDict built by inserting them in the given order. */
export function qdictOrder(keys: string[]): string[] {
  if (keys.length < 2) return keys;
  const indexed = keys.map((k, i) => ({ k, i, b: qdictBucket(k) }));
  indexed.sort((x, y) => x.b - y.b || y.i - x.i);
  return indexed.map((e) => e.k);
}

// ----------------------------------------------------------------- %.17g

/** C's printf("%.17g", x), computed exactly (round half to even on the exact binary value). */
export function formatDouble(x: number): string {
  if (!Number.isFinite(x)) return 'null';
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  const negative = x < 0;
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, Math.abs(x));
  const hi = view.getUint32(0);
  const lo = view.getUint32(4);
  const biased = (hi >>> 20) & 0x7ff;
  let mantissa = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  let exp2: number;
  if (biased === 0) {
    exp2 = -1074;
  } else {
    mantissa |= 1n << 52n;
    exp2 = biased - 1075;
  }
  // x = digits * 10^(point - digits.length)
  let digits: string;
  let point: number;
  if (exp2 >= 0) {
    digits = (mantissa << BigInt(exp2)).toString();
    point = digits.length;
  } else {
    digits = (mantissa * 5n ** BigInt(-exp2)).toString();
    point = digits.length + exp2;
  }
  const P = 17;
  if (digits.length > P) {
    let head = digits.slice(0, P);
    const rest = digits.slice(P);
    const first = rest.charCodeAt(0) - 48;
    const tail = /[1-9]/.test(rest.slice(1));
    const odd = (head.charCodeAt(P - 1) - 48) % 2 === 1;
    if (first > 5 || (first === 5 && (tail || odd))) {
      head = (BigInt(head) + 1n).toString();
      if (head.length > P) {
        head = head.slice(0, P);
        point++;
      }
    }
    digits = head;
  }
  digits = digits.replace(/0+$/, '');
  if (digits === '') digits = '0';
  const exp10 = point - 1;
  let body: string;
  if (exp10 < -4 || exp10 >= P) {
    const mant = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp10).toString().padStart(2, '0');
    body = `${mant}e${exp10 < 0 ? '-' : '+'}${e}`;
  } else if (exp10 >= 0) {
    const intPart = digits.length > exp10 + 1 ? digits.slice(0, exp10 + 1) : digits.padEnd(exp10 + 1, '0');
    const frac = digits.slice(exp10 + 1);
    body = frac ? `${intPart}.${frac}` : intPart;
  } else {
    body = `0.${'0'.repeat(-exp10 - 1)}${digits}`;
  }
  return negative ? `-${body}` : body;
}
