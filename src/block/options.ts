/**
 * Blockdev options: QEMU's JSON dictionaries and its dotted key=value form,
 * and a reader that lets each driver take the keys it knows so that the
 * leftovers can be refused with QEMU's message.
 */
import { BlockError } from './errors.js';

export type OptionValue = string | number | boolean | null | OptionDict | OptionValue[];
export interface OptionDict {
  [key: string]: OptionValue;
}

export function isDict(v: unknown): v is OptionDict {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parses QEMU's keyval syntax (`driver=qcow2,file.filename=a,,b.qcow2`) into
 * a nested dictionary. `,,` escapes a comma. Dicts whose keys are exactly
 * 0..n-1 become lists (`children.0=a,children.1=b`). `impliedKey` names the
 * key of a leading bare value (`--nbd-server` has none; `-drive` has `file`).
 */
export function parseKeyVal(text: string, impliedKey?: string): OptionDict {
  const root: OptionDict = {};
  const items: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === ',') {
      if (text[i + 1] === ',') { cur += ','; i++; continue; }
      items.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  items.push(cur);
  items.forEach((item, index) => {
    if (item === '' && index === items.length - 1 && index > 0) return;
    const eq = item.indexOf('=');
    let key: string;
    let value: string;
    if (eq < 0) {
      if (index === 0 && impliedKey) { key = impliedKey; value = item; }
      else throw new BlockError('EINVAL', `Expected '=' after parameter '${item}'`);
    } else {
      key = item.slice(0, eq);
      value = item.slice(eq + 1);
    }
    if (key === '') throw new BlockError('EINVAL', `Invalid parameter '' in '${text}'`);
    const path = key.split('.');
    let node: OptionDict = root;
    for (let p = 0; p < path.length - 1; p++) {
      const seg = path[p]!;
      const next = node[seg];
      if (next === undefined) {
        const created: OptionDict = {};
        node[seg] = created;
        node = created;
      } else if (isDict(next)) {
        node = next;
      } else {
        throw new BlockError('EINVAL', `Parameter '${path.slice(0, p + 1).join('.')}' used inconsistently`);
      }
    }
    const leaf = path[path.length - 1]!;
    if (leaf in node) throw new BlockError('EINVAL', `Parameter '${key}' is duplicate`);
    node[leaf] = value;
  });
  return listify(root) as OptionDict;
}

function listify(v: OptionValue): OptionValue {
  if (Array.isArray(v)) return v.map(listify);
  if (!isDict(v)) return v;
  const keys = Object.keys(v);
  if (keys.length > 0 && keys.every((k) => /^\d+$/.test(k)) && keys.map(Number).sort((a, b) => a - b).every((k, i) => k === i)) {
    return keys.sort((a, b) => Number(a) - Number(b)).map((k) => listify(v[k]!));
  }
  const out: OptionDict = {};
  for (const k of keys) out[k] = listify(v[k]!);
  return out;
}

/** Parses an option given on a command line: JSON when it starts with `{`, else keyval. */
export function parseOptionArg(text: string, impliedKey?: string): OptionDict {
  const trimmed = text.trim();
  if (trimmed.startsWith('{')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(trimmed);
    } catch (err) {
      throw new BlockError('EINVAL', `invalid JSON: ${(err as Error).message}`);
    }
    if (!isDict(parsed)) throw new BlockError('EINVAL', 'expected a JSON object');
    return parsed;
  }
  return parseKeyVal(text, impliedKey);
}

/**
 * Hands a driver its options one key at a time. Values given as strings (the
 * keyval form) are converted to the type the driver asks for, as QEMU's
 * keyval visitor does.
 */
export class OptionReader {
  private readonly taken = new Set<string>();

  constructor(readonly dict: OptionDict, readonly prefix = '') {}

  has(key: string): boolean {
    return key in this.dict;
  }

  /** The raw value, marked as consumed. */
  take(key: string): OptionValue | undefined {
    this.taken.add(key);
    return this.dict[key];
  }

  optString(key: string): string | undefined {
    const v = this.take(key);
    if (v === undefined) return undefined;
    if (typeof v === 'string') return v;
    if (typeof v === 'number') return String(v);
    throw this.typeError(key, 'a string');
  }

  string(key: string, missingMessage?: string): string {
    const v = this.optString(key);
    if (v === undefined) throw new BlockError('EINVAL', missingMessage ?? `Parameter '${this.prefix}${key}' is missing`);
    return v;
  }

  optBool(key: string): boolean | undefined {
    const v = this.take(key);
    if (v === undefined) return undefined;
    if (typeof v === 'boolean') return v;
    if (v === 'on' || v === 'true' || v === 'yes') return true;
    if (v === 'off' || v === 'false' || v === 'no') return false;
    throw new BlockError('EINVAL', `Parameter '${this.prefix}${key}' expects 'on' or 'off'`);
  }

  optInt(key: string, min = 0, max = Number.MAX_SAFE_INTEGER): number | undefined {
    const v = this.take(key);
    if (v === undefined) return undefined;
    let n: number;
    if (typeof v === 'number') n = v;
    else if (typeof v === 'string' && /^\s*-?\d+\s*$/.test(v)) n = Number(v);
    else if (typeof v === 'string' && /^\s*\d+(\.\d+)?\s*[kKmMgGtT]?\s*$/.test(v)) n = parseSizeLoose(v);
    else throw this.typeError(key, 'a number');
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new BlockError('EINVAL', `Parameter '${this.prefix}${key}' is out of range (${min}..${max})`);
    }
    return n;
  }

  optEnum<T extends string>(key: string, allowed: readonly T[]): T | undefined {
    const v = this.optString(key);
    if (v === undefined) return undefined;
    if (!(allowed as readonly string[]).includes(v)) {
      throw new BlockError('EINVAL', `Parameter '${this.prefix}${key}' does not accept value '${v}'`);
    }
    return v as T;
  }

  optDict(key: string): OptionDict | undefined {
    const v = this.take(key);
    if (v === undefined) return undefined;
    if (!isDict(v)) throw this.typeError(key, 'an object');
    return v;
  }

  /** Keys the driver never asked for. */
  leftovers(): string[] {
    return Object.keys(this.dict).filter((k) => !this.taken.has(k));
  }

  private typeError(key: string, what: string): BlockError {
    return new BlockError('EINVAL', `Invalid parameter type for '${this.prefix}${key}', expected: ${what}`);
  }
}

function parseSizeLoose(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)\s*$/.exec(text)!;
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.round(Number(m[1]) * mult);
}
