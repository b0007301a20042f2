/**
 * The client's option haggling, written like QEMU's client so that it works
 * against the same servers: mirror the server's handshake flags, ask for
 * structured replies (and carry on without them), select `base:allocation`
 * (exactly zero or one context back), then GO with a BLOCK_SIZE request,
 * accepting infos in any order and falling back to EXPORT_NAME when GO is
 * not understood.
 */
import { BlockError } from '../block/errors.js';
import {
  ClientFlag, HandshakeFlag, Info, META_BASE_ALLOCATION, Opt, Rep, TxFlag, isRepError, optionName, replyTypeName,
} from './constants.js';
import {
  encodeClientFlags, encodeInfoRequest, encodeMetaContextRequest, encodeOption, type ClientFrame, type OptionReplyFrame,
} from './client-codec.js';
import { readU64 } from './recv-buffer.js';

export interface HandshakeIO {
  send(data: Buffer): void;
  /** The next frame from the server (rejects when the connection ends). */
  nextFrame(): Promise<ClientFrame>;
  /** Tells the decoder that an EXPORT_NAME answer comes next. */
  expectExportInfo(noZeroes: boolean): void;
}

export interface HandshakeOptions {
  exportName: string;
  /** Ask for structured replies (default true). */
  structuredReplies?: boolean;
  /** Contexts to select; the default is `base:allocation`. An empty list selects none. */
  metaContexts?: readonly string[];
}

export interface NegotiatedExport {
  size: number;
  txFlags: number;
  structured: boolean;
  /** Selected context name → id (ids are opaque and may be 0). */
  contexts: Map<string, number>;
  minBlock: number;
  preferredBlock: number;
  maxBlock: number;
  /** Whether the server sent NBD_INFO_BLOCK_SIZE. */
  blockSizeAdvertised: boolean;
  viaExportName: boolean;
}

function fail(message: string): BlockError {
  return new BlockError('EIO', message);
}

function serverMessage(reply: OptionReplyFrame): string {
  return reply.data.length > 0 ? ` (server reported: ${reply.data.toString('utf8').slice(0, 200)})` : '';
}

function isPowerOf2(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

export async function clientHandshake(io: HandshakeIO, options: HandshakeOptions): Promise<NegotiatedExport> {
  const greeting = await io.nextFrame();
  if (greeting.kind !== 'greeting') throw fail('expected the server greeting');
  const fixed = (greeting.flags & HandshakeFlag.FIXED_NEWSTYLE) !== 0;
  const noZeroes = (greeting.flags & HandshakeFlag.NO_ZEROES) !== 0;
  io.send(encodeClientFlags((fixed ? ClientFlag.FIXED_NEWSTYLE : 0) | (noZeroes ? ClientFlag.NO_ZEROES : 0)));

  const result: NegotiatedExport = {
    size: 0, txFlags: 0, structured: false, contexts: new Map(),
    minBlock: 1, preferredBlock: 4096, maxBlock: 0xffffffff, blockSizeAdvertised: false, viaExportName: false,
  };
  const name = options.exportName;
  if (Buffer.byteLength(name, 'utf8') > 4096) throw new BlockError('EINVAL', 'export name longer than 4096 bytes');

  if (fixed) {
    if (options.structuredReplies ?? true) {
      const reply = await request(io, Opt.STRUCTURED_REPLY, Buffer.alloc(0));
      // ERR_UNSUP from an old server, ERR_INVALID for a repeat: either way, simple replies.
      result.structured = reply.type === Rep.ACK;
    }
    const wanted = options.metaContexts ?? [META_BASE_ALLOCATION];
    if (result.structured && wanted.length > 0) await setMetaContexts(io, name, wanted, result.contexts);
    if (await go(io, name, result)) return result;
    // GO is not understood: the old way, which cannot report errors.
  }
  io.send(encodeOption(Opt.EXPORT_NAME, Buffer.from(name, 'utf8')));
  io.expectExportInfo(noZeroes);
  const info = await io.nextFrame().catch((err: unknown) => {
    throw fail(`server closed the connection after NBD_OPT_EXPORT_NAME: export '${name}' may not exist (${(err as Error).message})`);
  });
  if (info.kind !== 'export-info') throw fail('expected the export size and flags');
  result.size = info.size;
  result.txFlags = info.flags;
  result.viaExportName = true;
  // Contexts were selected for the GO that did not happen; they still apply to this export.
  checkFlags(result);
  return result;
}

async function request(io: HandshakeIO, option: number, data: Buffer): Promise<OptionReplyFrame> {
  io.send(encodeOption(option, data));
  return reply(io, option);
}

async function reply(io: HandshakeIO, option: number): Promise<OptionReplyFrame> {
  const frame = await io.nextFrame();
  if (frame.kind !== 'option-reply') throw fail(`unexpected ${frame.kind} during option haggling`);
  if (frame.option !== option) {
    throw fail(`reply to ${optionName(frame.option)} while waiting for ${optionName(option)}`);
  }
  return frame;
}

async function setMetaContexts(io: HandshakeIO, name: string, wanted: readonly string[], out: Map<string, number>): Promise<void> {
  io.send(encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextRequest(name, wanted)));
  for (;;) {
    const r = await reply(io, Opt.SET_META_CONTEXT);
    if (r.type === Rep.META_CONTEXT) {
      if (r.data.length < 5) throw fail('short NBD_REP_META_CONTEXT reply');
      const id = r.data.readUInt32BE(0);
      const context = r.data.toString('utf8', 4);
      if (!wanted.includes(context)) throw fail(`server selected unexpected meta context '${context.slice(0, 100)}'`);
      if (out.has(context)) throw fail(`server selected meta context '${context}' twice`);
      out.set(context, id);
      continue;
    }
    if (r.type === Rep.ACK) return;
    if (isRepError(r.type)) {
      // No block status then; the export is still usable.
      out.clear();
      return;
    }
    throw fail(`unexpected ${replyTypeName(r.type)} to NBD_OPT_SET_META_CONTEXT`);
  }
}

/** Returns false when the server does not know GO (use EXPORT_NAME). */
async function go(io: HandshakeIO, name: string, result: NegotiatedExport): Promise<boolean> {
  io.send(encodeOption(Opt.GO, encodeInfoRequest(name, [Info.BLOCK_SIZE])));
  let haveExport = false;
  for (;;) {
    const r = await reply(io, Opt.GO);
    if (r.type === Rep.INFO) {
      if (r.data.length < 2) throw fail('short NBD_REP_INFO reply');
      const type = r.data.readUInt16BE(0);
      if (type === Info.EXPORT) {
        if (r.data.length !== 12) throw fail(`NBD_INFO_EXPORT of ${r.data.length} bytes`);
        result.size = readU64(r.data, 2);
        result.txFlags = r.data.readUInt16BE(10);
        haveExport = true;
      } else if (type === Info.BLOCK_SIZE) {
        if (r.data.length !== 14) throw fail(`NBD_INFO_BLOCK_SIZE of ${r.data.length} bytes`);
        const min = r.data.readUInt32BE(2);
        const pref = r.data.readUInt32BE(6);
        const max = r.data.readUInt32BE(10);
        if (!isPowerOf2(min) || min > 65536) throw fail(`server minimum block size ${min} is not a power of 2 up to 64 KiB`);
        if (!isPowerOf2(pref) || pref < min) throw fail(`server preferred block size ${pref} is invalid`);
        if (max < min || (max !== 0xffffffff && max % min !== 0)) throw fail(`server maximum block size ${max} is invalid`);
        result.minBlock = min;
        result.preferredBlock = pref;
        result.maxBlock = max;
        result.blockSizeAdvertised = true;
      }
      // NAME, DESCRIPTION and types we do not know are ignored.
      continue;
    }
    if (r.type === Rep.ACK) {
      if (!haveExport) throw fail('broken server omitted NBD_INFO_EXPORT');
      checkFlags(result);
      return true;
    }
    if (r.type === Rep.ERR_UNSUP) return false;
    if (r.type === Rep.ERR_UNKNOWN) throw new BlockError('ENOENT', `Requested export not available${serverMessage(r)}`);
    if (isRepError(r.type)) throw fail(`${replyTypeName(r.type)} from NBD_OPT_GO${serverMessage(r)}`);
    throw fail(`unexpected ${replyTypeName(r.type)} to NBD_OPT_GO`);
  }
}

function checkFlags(result: NegotiatedExport): void {
  if (!(result.txFlags & TxFlag.HAS_FLAGS)) throw fail('server sent transmission flags without NBD_FLAG_HAS_FLAGS');
  if (result.blockSizeAdvertised && result.size % result.minBlock !== 0) {
    throw fail(`export size ${result.size} is not a multiple of the minimum block size ${result.minBlock}`);
  }
}
