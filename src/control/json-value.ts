/**
 * The values QMP carries. JSON alone cannot tell `5` from `5.0`, but QEMU
 * can: an integer parameter refuses a float token, and a float is echoed
 * with `%.17g`. So float tokens become `QmpFloat`, and integers beyond
 * 2^53 (which QEMU keeps exact as int64/uint64) become `bigint`.
 */

export class QmpFloat {
  constructor(readonly value: number) {}
}

export type QmpValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | QmpFloat
  | QmpValue[]
  | QmpObject;

export interface QmpObject {
  [key: string]: QmpValue;
}

/** A dictionary with no prototype, so that keys such as `__proto__` are plain data. */
export function newObject(): QmpObject {
  return Object.create(null) as QmpObject;
}

export function isQmpObject(v: unknown): v is QmpObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof QmpFloat);
}

/** JSON type names as QEMU's QObject input visitor reports them. */
export function jsonTypeName(v: QmpValue): string {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return 'boolean';
  if (typeof v === 'string') return 'string';
  if (typeof v === 'number' || typeof v === 'bigint' || v instanceof QmpFloat) return 'number';
  return Array.isArray(v) ? 'array' : 'object';
}

/**
 * Converts a parsed value to plain JavaScript data: floats become numbers,
 * integers become numbers when that is exact (else they stay bigint).
 */
export function toPlain(v: QmpValue): unknown {
  if (v instanceof QmpFloat) return v.value;
  if (typeof v === 'bigint') {
    const n = Number(v);
    return Number.isSafeInteger(n) ? n : v;
  }
  if (Array.isArray(v)) return v.map(toPlain);
  if (isQmpObject(v)) {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v)) {
      Object.defineProperty(out, k, { value: toPlain(v[k]!), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return v;
}
