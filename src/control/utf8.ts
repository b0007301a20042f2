/**
 * QEMU's "modified UTF-8": standard UTF-8 except that U+0000 is written
 * C0 80, and overlong forms, surrogates, noncharacters and code points
 * beyond U+10FFFF are invalid. The JSON parser refuses invalid sequences in
 * strings; the writer turns them into U+FFFD.
 */

const MIN_CODEPOINT = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];

export function isValidCodepoint(cp: number): boolean {
  if (cp < 0 || cp > 0x10ffff) return false;
  if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) === 0xfffe) return false;
  return !(cp >= 0xd800 && cp <= 0xdfff);
}

/** Where the last `decodeModUtf8` call stopped. */
export let decodedEnd = 0;

/**
 * Decodes the code point starting at `bytes[i]` (stopping at `end`, which
 * acts like the terminating NUL of a C string). Returns -1 for an invalid
 * sequence; `decodedEnd` is set past the bytes consumed, as QEMU's
 * mod_utf8_codepoint does, so that a caller replacing errors with U+FFFD
 * resumes where QEMU would.
 */
export function decodeModUtf8(bytes: Uint8Array, i: number, end: number): number {
  if (i >= end || bytes[i] === 0) {
    decodedEnd = i;
    return -1;
  }
  let p = i;
  const lead = bytes[p++]!;
  let cp: number;
  if (lead < 0x80) {
    cp = lead;
  } else if (lead >= 0xfe || (lead & 0x40) === 0) {
    cp = -1;
  } else {
    let len = 0;
    let mask = 0x80;
    for (; lead & mask; mask >>= 1) len++;
    cp = lead & (mask - 1);
    for (let k = 1; k < len; k++) {
      const b = p < end ? bytes[p]! : 0;
      if ((b & 0xc0) !== 0x80) {
        decodedEnd = p;
        return -1;
      }
      p++;
      cp = cp * 64 + (b & 0x3f);
    }
    if (!isValidCodepoint(cp) || (cp < MIN_CODEPOINT[len - 2]! && !(cp === 0 && len === 2))) cp = -1;
  }
  decodedEnd = p;
  return cp;
}

/**
 * Bytes to text the way QEMU prints a C string it did not validate: stops at
 * the first NUL and shows each invalid sequence as U+FFFD.
 */
export function decodeLossy(bytes: Uint8Array, start: number, end: number): string {
  let out = '';
  let i = start;
  while (i < end && bytes[i] !== 0) {
    const b = bytes[i]!;
    if (b < 0x80) {
      out += String.fromCharCode(b);
      i++;
      continue;
    }
    const cp = decodeModUtf8(bytes, i, end);
    out += cp < 0 ? '\ufffd' : String.fromCodePoint(cp);
    i = decodedEnd > i ? decodedEnd : i + 1;
  }
  return out;
}

/** A string as modified UTF-8 bytes (U+0000 as C0 80; lone surrogates as U+FFFD). */
export function encodeModUtf8(s: string): Buffer {
  if (/^[\x01-\x7f]*$/.test(s)) return Buffer.from(s, 'latin1');
  const out: number[] = [];
  for (const ch of s) {
    let cp = ch.codePointAt(0)!;
    if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd;
    if (cp === 0) out.push(0xc0, 0x80);
    else if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  }
  return Buffer.from(out);
}
