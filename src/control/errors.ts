/**
 * The control plane's error: what QMP sends as `{"error": {"class", "desc"}}`.
 * The class is one of QEMU's QapiErrorClass values; clients match on it,
 * so it must stay stable. The desc is for humans (and for tests that pin
 * QEMU's wording).
 */
import { BlockError } from '../block/errors.js';

export const QMP_ERROR_CLASSES = ['GenericError', 'CommandNotFound', 'DeviceNotActive', 'DeviceNotFound', 'KVMMissingCap'] as const;
export type QmpErrorClass = (typeof QMP_ERROR_CLASSES)[number];

export function isQmpErrorClass(text: string): text is QmpErrorClass {
  return (QMP_ERROR_CLASSES as readonly string[]).includes(text);
}

export class QmpError extends Error {
  readonly class: QmpErrorClass;
  readonly desc: string;

  constructor(errorClass: QmpErrorClass, desc: string, options?: { cause?: unknown }) {
    super(desc, options);
    this.name = 'QmpError';
    this.class = errorClass;
    this.desc = desc;
  }

  static generic(desc: string, options?: { cause?: unknown }): QmpError {
    return new QmpError('GenericError', desc, options);
  }

  static commandNotFound(desc: string): QmpError {
    return new QmpError('CommandNotFound', desc);
  }

  static is(value: unknown): value is QmpError {
    return value instanceof QmpError;
  }

  /**
   * What a handler's failure looks like on the wire. Block errors carry
   * QEMU's message already; anything else (a bug) still becomes a
   * GenericError so that the client gets an answer.
   */
  static from(err: unknown): QmpError {
    if (err instanceof QmpError) return err;
    if (BlockError.is(err)) return QmpError.generic(err.message, { cause: err });
    if (err instanceof Error) return QmpError.generic(err.message, { cause: err });
    return QmpError.generic(String(err));
  }

  /** The `error` member of a response. */
  toWire(): { class: QmpErrorClass; desc: string } {
    return { class: this.class, desc: this.desc };
  }
}
