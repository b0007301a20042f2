/**
 * NBD protocol numbers (NetworkBlockDevice/nbd doc/proto.md). Everything on
 * the wire is big-endian.
 */

/** 'NBDMAGIC', first in every greeting. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': second in the newstyle greeting and first in every option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** The oldstyle greeting's second magic (we never serve it; the client refuses it). */
export const OLDSTYLE_MAGIC = 0x00420281861253n;
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;

// Split into 32-bit halves so that the hot paths compare numbers, not bigints.
export const IHAVEOPT_HI = 0x49484156;
export const IHAVEOPT_LO = 0x454f5054;
export const OPTION_REPLY_MAGIC_HI = 0x0003e889;
export const OPTION_REPLY_MAGIC_LO = 0x045565a9;

export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
/** Extended-header magics: recognised only to name them in errors. */
export const EXTENDED_REQUEST_MAGIC = 0x21e41c71;
export const EXTENDED_REPLY_MAGIC = 0x6e8a278c;

/** Handshake flags (server, 16 bits). */
export const HandshakeFlag = {
  FIXED_NEWSTYLE: 1,
  NO_ZEROES: 2,
} as const;

/** Client flags (32 bits), mirroring the handshake flags. */
export const ClientFlag = {
  FIXED_NEWSTYLE: 1,
  NO_ZEROES: 2,
} as const;

/** Transmission flags (16 bits). */
export const TxFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
  BLOCK_STATUS_PAYLOAD: 1 << 12,
} as const;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERR = 0x80000000;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
  ERR_EXT_HEADER_REQD: REP_ERR + 10,
} as const;

export function isRepError(type: number): boolean {
  return type >= REP_ERR;
}

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5,
} as const;

export const ReplyFlag = {
  DONE: 1,
} as const;

export const ChunkType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  BLOCK_STATUS_EXT: 6,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

export function isErrorChunk(type: number): boolean {
  return (type & 0x8000) !== 0;
}

/** NBD error numbers; the spec fixes them independently of the host's errno values. */
export const NbdErr = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** `base:allocation` extent flags. */
export const StateFlag = {
  HOLE: 1,
  ZERO: 2,
} as const;

export const META_BASE_ALLOCATION = 'base:allocation';
export const META_ALLOCATION_DEPTH = 'qemu:allocation-depth';

/**
 * Context ids as QEMU's server assigns them. They are opaque to clients, but
 * using QEMU's keeps traces comparable and proves our client copes with id 0.
 */
export const MetaId = {
  BASE_ALLOCATION: 0,
  ALLOCATION_DEPTH: 1,
} as const;

/** Strings (export names, queries, messages) may be at most this long. */
export const MAX_STRING = 4096;
/** The largest READ/WRITE payload every implementation accepts. */
export const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;

/** The 28-byte request header. */
export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const CHUNK_HEADER_SIZE = 20;
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;

export function optionName(code: number): string {
  for (const [name, value] of Object.entries(Opt)) if (value === code) return `NBD_OPT_${name}`;
  return `option ${code}`;
}

export function commandName(code: number): string {
  for (const [name, value] of Object.entries(Cmd)) if (value === code) return name.toLowerCase();
  return `command ${code}`;
}

export function replyTypeName(code: number): string {
  for (const [name, value] of Object.entries(Rep)) if (value === code) return `NBD_REP_${name}`;
  return `reply ${code >>> 0}`;
}
