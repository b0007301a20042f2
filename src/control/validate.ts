/**
 * Checks a client's arguments against a spec with the rules and messages
 * of QEMU's QObject input visitor (qapi/qobject-input-visitor.c): members
 * are visited in schema order, so the first missing or ill-typed member in
 * that order is reported, and unknown members are reported only after every
 * known one passed. Paths are QEMU's "full names" (`addr.data.port`,
 * `enable[0]`), except where QEMU itself prints the bare member name (enum
 * values, integer ranges, alternates), which it does as 'null' inside lists.
 */
import { QmpError } from './errors.js';
import { isQmpObject, QmpFloat, type QmpObject, type QmpValue } from './json-value.js';
import { qdictOrder } from './json-write.js';
import { memberEntries, type IntWidth, type Members, type Spec } from './schema.js';

type Segment = string | number;

/** Where a value sits in the arguments, for messages. */
export class Visit {
  private constructor(private readonly path: readonly Segment[]) {}

  static root(): Visit {
    return new Visit([]);
  }

  member(name: string): Visit {
    return new Visit([...this.path, name]);
  }

  element(index: number): Visit {
    return new Visit([...this.path, index]);
  }

  /** QEMU's full_name: `a.b[2].c`. */
  get fullName(): string {
    let out = '';
    for (const seg of this.path) {
      if (typeof seg === 'number') out += `[${seg}]`;
      else out += out === '' ? seg : `.${seg}`;
    }
    return out;
  }

  /** The visitor's own `name`: the member name, or 'null' for a list element. */
  get name(): string {
    const last = this.path[this.path.length - 1];
    return typeof last === 'string' ? last : 'null';
  }

  fail(message: string): QmpError {
    return QmpError.generic(message);
  }

  typeError(expected: string): QmpError {
    return this.fail(`Invalid parameter type for '${this.fullName}', expected: ${expected}`);
  }
}

export function validate(spec: Spec, value: QmpValue, at: Visit = Visit.root()): unknown {
  switch (spec.kind) {
    case 'str':
      if (typeof value !== 'string') throw at.typeError('string');
      return value;
    case 'bool':
      if (typeof value !== 'boolean') throw at.typeError('boolean');
      return value;
    case 'null':
      if (value !== null) throw at.typeError('null');
      return null;
    case 'any':
      return value;
    case 'number':
      if (typeof value === 'number') return value;
      if (typeof value === 'bigint') return Number(value);
      if (value instanceof QmpFloat) return value.value;
      throw at.typeError('number');
    case 'int':
      return validateInt(spec.width, value, at);
    case 'enum': {
      if (typeof value !== 'string') throw at.typeError('string');
      if (!spec.values.includes(value)) throw at.fail(`Parameter '${at.name}' does not accept value '${value}'`);
      return value;
    }
    case 'list': {
      if (!Array.isArray(value)) throw at.typeError('array');
      return value.map((v, i) => validate(spec.of, v, at.element(i)));
    }
    case 'struct': {
      if (!isQmpObject(value)) throw at.typeError('object');
      const out: Record<string, unknown> = {};
      visitMembers(spec.members, value, at, out);
      checkUnexpected(value, out, at);
      return out;
    }
    case 'union': {
      if (!isQmpObject(value)) throw at.typeError('object');
      const out: Record<string, unknown> = {};
      visitMembers(spec.base, value, at, out);
      const variant = spec.variants[out[spec.tag] as string];
      if (variant) visitMembers(variant, value, at, out);
      checkUnexpected(value, out, at);
      return out;
    }
    case 'alternate': {
      const branch = spec.branches.find((b) => acceptsJsonType(b, value));
      if (!branch) throw at.fail(`Invalid parameter type for '${at.name}', expected: ${spec.name}`);
      return validate(branch, value, at);
    }
    case 'custom':
      return spec.validate(value, at);
  }
}

function visitMembers(members: Members, value: QmpObject, at: Visit, out: Record<string, unknown>): void {
  for (const m of memberEntries(members)) {
    const present = Object.prototype.hasOwnProperty.call(value, m.name);
    if (!present) {
      if (m.optional) continue;
      throw at.member(m.name).fail(`Parameter '${at.member(m.name).fullName}' is missing`);
    }
    out[m.name] = validate(m.spec, value[m.name]!, at.member(m.name));
  }
}

function checkUnexpected(value: QmpObject, known: Record<string, unknown>, at: Visit): void {
  const extra = qdictOrder(Object.keys(value)).find((k) => !Object.prototype.hasOwnProperty.call(known, k));
  if (extra !== undefined) throw at.fail(`Parameter '${at.member(extra).fullName}' is unexpected`);
}

/** Which branch of an alternate a value selects: by its JSON type, as QEMU does. */
function acceptsJsonType(spec: Spec, value: QmpValue): boolean {
  switch (spec.kind) {
    case 'str':
    case 'enum': return typeof value === 'string';
    case 'bool': return typeof value === 'boolean';
    case 'null': return value === null;
    case 'int':
    case 'number': return typeof value === 'number' || typeof value === 'bigint' || value instanceof QmpFloat;
    case 'struct':
    case 'union': return isQmpObject(value);
    case 'list': return Array.isArray(value);
    case 'any': return true;
    case 'alternate': return spec.branches.some((b) => acceptsJsonType(b, value));
    case 'custom': return acceptsJsonType(spec.introspectAs, value);
  }
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;

const RANGES: Record<IntWidth, [bigint, bigint, string]> = {
  int: [INT64_MIN, INT64_MAX, 'int64_t'],
  int64: [INT64_MIN, INT64_MAX, 'int64_t'],
  int8: [-(2n ** 7n), 2n ** 7n - 1n, 'int8_t'],
  int16: [-(2n ** 15n), 2n ** 15n - 1n, 'int16_t'],
  int32: [-(2n ** 31n), 2n ** 31n - 1n, 'int32_t'],
  uint8: [0n, 2n ** 8n - 1n, 'uint8_t'],
  uint16: [0n, 2n ** 16n - 1n, 'uint16_t'],
  uint32: [0n, 2n ** 32n - 1n, 'uint32_t'],
  uint64: [0n, UINT64_MAX, 'uint64_t'],
  size: [0n, UINT64_MAX, 'uint64_t'],
};

function validateInt(width: IntWidth, value: QmpValue, at: Visit): number {
  const unsigned = width.startsWith('u') || width === 'size';
  let v: bigint;
  if (typeof value === 'number' && Number.isInteger(value)) v = BigInt(value);
  else if (typeof value === 'bigint') v = value;
  else if (unsigned) throw at.fail(`Parameter '${at.fullName}' expects uint64`);
  else throw at.typeError('integer');
  if (unsigned) {
    // QEMU accepts negative numbers for unsigned parameters as their two's complement.
    if (v < 0n) {
      if (v < INT64_MIN) throw at.fail(`Parameter '${at.fullName}' expects uint64`);
      v += 2n ** 64n;
    }
  } else if (v > INT64_MAX) {
    throw at.typeError('integer');
  }
  const [min, max, cName] = RANGES[width];
  if (width !== 'int' && width !== 'int64' && width !== 'uint64' && width !== 'size' && (v < min || v > max)) {
    throw at.fail(`Parameter '${at.name}' expects ${cName}`);
  }
  const n = Number(v);
  if (!Number.isSafeInteger(n)) {
    // Exact above 2^53 would need bigint everywhere; no colo-blk parameter needs it.
    throw at.fail(`Parameter '${at.fullName}' is out of range (larger than 2^53)`);
  }
  return n;
}
