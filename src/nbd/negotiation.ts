/**
 * The server's side of option haggling, without I/O: client flags and
 * options in, replies out, and at the end either the negotiated session or
 * the reason to hang up. Answers follow QEMU's server (the peer every COLO
 * client was written against): the same info order, the same fixed meta
 * context ids, the same wildcard rules, and ERR_UNSUP for everything we do
 * not implement (STARTTLS and EXTENDED_HEADERS included) so that modern
 * clients fall back instead of giving up.
 */
import {
  ClientFlag, Info, MAX_STRING, META_ALLOCATION_DEPTH, META_BASE_ALLOCATION, MetaId, Opt, Rep, TxFlag, optionName,
} from './constants.js';
import { encodeExportNameReply, encodeOptionReply, type OptionFrame } from './server-codec.js';

/** What the negotiation needs to know about an export. */
export interface ExportDescriptor {
  readonly name: string;
  readonly description: string;
  readonly size: number;
  readonly writable: boolean;
  /** Offer `qemu:allocation-depth` (QEMU offers it only when the export asks for it). */
  readonly allocationDepth: boolean;
}

export interface ExportCatalog {
  find(name: string): ExportDescriptor | undefined;
  list(): Iterable<ExportDescriptor>;
}

export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface MetaSelection {
  baseAllocation: boolean;
  allocationDepth: boolean;
}

export interface Session {
  export: ExportDescriptor;
  structured: boolean;
  /** Contexts usable with BLOCK_STATUS (already checked against the chosen export). */
  meta: MetaSelection;
  txFlags: number;
  /** True when the client ended with NBD_OPT_EXPORT_NAME rather than GO. */
  viaExportName: boolean;
  /** Whether the client asked for NBD_INFO_BLOCK_SIZE (and so promised to obey it). */
  blockSizeRequested: boolean;
}

export interface NegotiationStep {
  replies: Buffer[];
  /** Close after sending the replies: 'abort' for a soft disconnect, 'error' for a hard one. */
  end?: 'abort' | 'error';
  /** Why the connection ends (logged). */
  reason?: string;
  /** Transmission starts right after the replies. */
  session?: Session;
}

/** Transmission flags as qemu-nbd sets them: 0x0ded for a writable export with structured replies. */
export function transmissionFlags(writable: boolean, structured: boolean): number {
  let flags = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_CACHE | TxFlag.CAN_MULTI_CONN;
  flags |= writable ? TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO : TxFlag.READ_ONLY;
  if (structured) flags |= TxFlag.SEND_DF;
  return flags;
}

/** Reads length-prefixed fields from option data; every getter returns null past the end. */
class OptionReader {
  private at = 0;
  constructor(private readonly data: Buffer) {}

  get left(): number {
    return this.data.length - this.at;
  }

  u16(): number | null {
    if (this.left < 2) return null;
    const v = this.data.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }

  u32(): number | null {
    if (this.left < 4) return null;
    const v = this.data.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }

  bytes(n: number): Buffer | null {
    if (this.left < n) return null;
    const v = this.data.subarray(this.at, this.at + n);
    this.at += n;
    return v;
  }
}

class OptionInvalid extends Error {
  constructor(readonly replyType: number, message: string) {
    super(message);
  }
}

function invalid(message: string): OptionInvalid {
  return new OptionInvalid(Rep.ERR_INVALID, message);
}

function decodeString(raw: Buffer): string {
  if (raw.includes(0)) throw invalid('Unexpected embedded NUL');
  return raw.toString('utf8');
}

/** Export names in messages: printable and short, so a hostile name cannot flood a log line. */
function sanitize(name: string): string {
  const clean = name.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > 80 ? `${clean.slice(0, 80)}...` : clean;
}

export class ServerNegotiation {
  private fixedNewstyle = false;
  private noZeroes = false;
  private structured = false;
  private metaExport: string | null = null;
  private meta: MetaSelection = { baseAllocation: false, allocationDepth: false };
  /** Options handled so far, for the negotiation log line. */
  readonly optionsSeen: number[] = [];

  constructor(private readonly catalog: ExportCatalog, private readonly sizes: BlockSizes) {}

  onClientFlags(flags: number): NegotiationStep {
    const known = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;
    if ((flags & ~known) !== 0) {
      return { replies: [], end: 'error', reason: `unknown client flags 0x${flags.toString(16)}` };
    }
    this.fixedNewstyle = (flags & ClientFlag.FIXED_NEWSTYLE) !== 0;
    this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
    return { replies: [] };
  }

  onOption(frame: OptionFrame): NegotiationStep {
    this.optionsSeen.push(frame.code);
    if (frame.code === Opt.EXPORT_NAME) return this.exportName(frame);
    if (!this.fixedNewstyle) {
      // Without fixed newstyle there is no way to refuse an option politely.
      return { replies: [], end: 'error', reason: `${optionName(frame.code)} from a client without fixed newstyle` };
    }
    if (frame.data === null) {
      const known = frame.code >= Opt.ABORT && frame.code <= Opt.SET_META_CONTEXT && frame.code !== Opt.PEEK_EXPORT
        && frame.code !== Opt.STARTTLS;
      return this.reply(frame.code, known ? Rep.ERR_TOO_BIG : Rep.ERR_UNSUP,
        known ? `option ${optionName(frame.code)} of ${frame.length} bytes is too long` : `unsupported option ${frame.code}`);
    }
    try {
      switch (frame.code) {
        case Opt.ABORT:
          return { replies: [encodeOptionReply(frame.code, Rep.ACK)], end: 'abort', reason: 'client sent NBD_OPT_ABORT' };
        case Opt.LIST:
          return this.list(frame.data);
        case Opt.INFO:
        case Opt.GO:
          return this.infoOrGo(frame.code, frame.data);
        case Opt.STRUCTURED_REPLY:
          return this.structuredReply(frame.data);
        case Opt.LIST_META_CONTEXT:
        case Opt.SET_META_CONTEXT:
          return this.metaContext(frame.code, frame.data);
        default:
          return this.reply(frame.code, Rep.ERR_UNSUP, `unsupported option ${optionName(frame.code)}`);
      }
    } catch (err) {
      if (err instanceof OptionInvalid) return this.reply(frame.code, err.replyType, err.message);
      throw err;
    }
  }

  private reply(option: number, type: number, message?: string): NegotiationStep {
    const data = message === undefined ? undefined : Buffer.from(message, 'utf8');
    return { replies: [encodeOptionReply(option, type, data)] };
  }

  private exportName(frame: OptionFrame): NegotiationStep {
    if (frame.data === null || frame.data.length > MAX_STRING) {
      return { replies: [], end: 'error', reason: `NBD_OPT_EXPORT_NAME with a name of ${frame.length} bytes` };
    }
    const name = frame.data.includes(0) ? null : frame.data.toString('utf8');
    const exp = name === null ? undefined : this.catalog.find(name);
    if (!exp) {
      // EXPORT_NAME cannot carry an error: the spec says hang up.
      return { replies: [], end: 'error', reason: `export '${sanitize(name ?? '')}' not present` };
    }
    const session = this.session(exp, true, false);
    return { replies: [encodeExportNameReply(exp.size, session.txFlags, this.noZeroes)], session };
  }

  private list(data: Buffer): NegotiationStep {
    if (data.length !== 0) throw invalid('option NBD_OPT_LIST has unexpected length');
    const replies: Buffer[] = [];
    for (const exp of this.catalog.list()) {
      const name = Buffer.from(exp.name, 'utf8');
      const desc = Buffer.from(exp.description, 'utf8');
      const body = Buffer.allocUnsafe(4 + name.length + desc.length);
      body.writeUInt32BE(name.length, 0);
      name.copy(body, 4);
      desc.copy(body, 4 + name.length);
      replies.push(encodeOptionReply(Opt.LIST, Rep.SERVER, body));
    }
    replies.push(encodeOptionReply(Opt.LIST, Rep.ACK));
    return { replies };
  }

  private readName(r: OptionReader): string {
    const len = r.u32();
    if (len === null) throw invalid('Inconsistent lengths in option');
    if (len > MAX_STRING) throw invalid(`Invalid name length: ${len}`);
    const raw = r.bytes(len);
    if (raw === null) throw invalid('Inconsistent lengths in option');
    return decodeString(raw);
  }

  private infoOrGo(code: number, data: Buffer): NegotiationStep {
    const r = new OptionReader(data);
    const name = this.readName(r);
    const count = r.u16();
    if (count === null) throw invalid('Inconsistent lengths in option');
    let sendName = false;
    let sendDescription = false;
    let blockSize = false;
    for (let i = 0; i < count; i++) {
      const info = r.u16();
      if (info === null) throw invalid('Inconsistent lengths in option');
      if (info === Info.NAME) sendName = true;
      else if (info === Info.DESCRIPTION) sendDescription = true;
      else if (info === Info.BLOCK_SIZE) blockSize = true;
      // Unknown info requests are ignored, as the spec requires.
    }
    if (r.left !== 0) throw invalid(`option ${optionName(code)} has unexpected length`);
    const exp = this.catalog.find(name);
    if (!exp) return this.reply(code, Rep.ERR_UNKNOWN, `export '${sanitize(name)}' not present`);

    const replies: Buffer[] = [];
    if (sendName) replies.push(this.info(code, Info.NAME, Buffer.from(name, 'utf8')));
    if (sendDescription && exp.description !== '') {
      replies.push(this.info(code, Info.DESCRIPTION, Buffer.from(exp.description, 'utf8')));
    }
    const sizes = Buffer.allocUnsafe(12);
    sizes.writeUInt32BE(this.sizes.minimum, 0);
    sizes.writeUInt32BE(this.sizes.preferred, 4);
    sizes.writeUInt32BE(this.sizes.maximum, 8);
    replies.push(this.info(code, Info.BLOCK_SIZE, sizes));
    const session = this.session(exp, false, blockSize);
    const summary = Buffer.allocUnsafe(10);
    summary.writeUInt32BE(Math.floor(exp.size / 0x100000000), 0);
    summary.writeUInt32BE(exp.size >>> 0, 4);
    summary.writeUInt16BE(session.txFlags, 8);
    replies.push(this.info(code, Info.EXPORT, summary));
    replies.push(encodeOptionReply(code, Rep.ACK));
    return code === Opt.GO ? { replies, session } : { replies };
  }

  private info(code: number, type: number, body: Buffer): Buffer {
    const data = Buffer.allocUnsafe(2 + body.length);
    data.writeUInt16BE(type, 0);
    body.copy(data, 2);
    return encodeOptionReply(code, Rep.INFO, data);
  }

  private structuredReply(data: Buffer): NegotiationStep {
    if (data.length !== 0) throw invalid('option NBD_OPT_STRUCTURED_REPLY has unexpected length');
    if (this.structured) throw invalid('structured reply already negotiated');
    this.structured = true;
    return { replies: [encodeOptionReply(Opt.STRUCTURED_REPLY, Rep.ACK)] };
  }

  private metaContext(code: number, data: Buffer): NegotiationStep {
    const listing = code === Opt.LIST_META_CONTEXT;
    if (!listing) {
      // SET replaces the selection even when it fails.
      this.meta = { baseAllocation: false, allocationDepth: false };
      this.metaExport = null;
    }
    if (!this.structured) {
      throw invalid(`request option '${optionName(code)}' when structured reply is not negotiated`);
    }
    const r = new OptionReader(data);
    const name = this.readName(r);
    const exp = this.catalog.find(name);
    if (!exp) return this.reply(code, Rep.ERR_UNKNOWN, `export '${sanitize(name)}' not present`);
    const count = r.u32();
    if (count === null) throw invalid('Inconsistent lengths in option');
    const sel: MetaSelection = { baseAllocation: false, allocationDepth: false };
    if (listing && count === 0) {
      sel.baseAllocation = true;
      sel.allocationDepth = true;
    }
    for (let i = 0; i < count; i++) {
      const len = r.u32();
      if (len === null) throw invalid('Inconsistent lengths in option');
      const raw = r.bytes(len);
      if (raw === null) throw invalid('Inconsistent lengths in option');
      if (len > MAX_STRING) continue; // QEMU skips over-long queries rather than failing
      matchQuery(decodeString(raw), listing, sel);
    }
    if (r.left !== 0) throw invalid(`option ${optionName(code)} has unexpected length`);
    if (!exp.allocationDepth) sel.allocationDepth = false;

    const replies: Buffer[] = [];
    if (sel.baseAllocation) replies.push(this.contextReply(code, listing ? 0 : MetaId.BASE_ALLOCATION, META_BASE_ALLOCATION));
    if (sel.allocationDepth) replies.push(this.contextReply(code, listing ? 0 : MetaId.ALLOCATION_DEPTH, META_ALLOCATION_DEPTH));
    replies.push(encodeOptionReply(code, Rep.ACK));
    if (!listing) {
      this.meta = sel;
      this.metaExport = name;
    }
    return { replies };
  }

  private contextReply(code: number, id: number, name: string): Buffer {
    const text = Buffer.from(name, 'utf8');
    const data = Buffer.allocUnsafe(4 + text.length);
    data.writeUInt32BE(id, 0);
    text.copy(data, 4);
    return encodeOptionReply(code, Rep.META_CONTEXT, data);
  }

  private session(exp: ExportDescriptor, viaExportName: boolean, blockSizeRequested: boolean): Session {
    // Contexts chosen for another export do not carry over (QEMU's nbd_check_meta_export).
    const meta = this.metaExport === exp.name ? { ...this.meta } : { baseAllocation: false, allocationDepth: false };
    return {
      export: exp,
      structured: this.structured,
      meta,
      txFlags: transmissionFlags(exp.writable, this.structured),
      viaExportName,
      blockSizeRequested,
    };
  }
}

/**
 * QEMU's query rules: `base:allocation` and `qemu:allocation-depth` by exact
 * name; an empty leaf (`base:`, `qemu:`) is a wildcard for LIST and selects
 * nothing for SET; unknown namespaces and leaves are ignored, not errors.
 */
function matchQuery(query: string, listing: boolean, sel: MetaSelection): void {
  if (query.startsWith('base:')) {
    const leaf = query.slice(5);
    if ((leaf === '' && listing) || leaf === 'allocation') sel.baseAllocation = true;
    return;
  }
  if (query.startsWith('qemu:')) {
    const leaf = query.slice(5);
    if ((leaf === '' && listing) || leaf === 'allocation-depth') sel.allocationDepth = true;
  }
}
