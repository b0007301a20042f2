/**
 * `colo-blk io`: the qemu-io subset people script against images —
 * read/write with byte patterns, write-zeroes, discard, flush, map, alloc —
 * with qemu-io's output and exit status (non-zero when any command failed).
 */
import { BlockBackend } from '../block/backend.js';
import { blockStatusAbove } from '../block/chain.js';
import { BlockError, strerror } from '../block/errors.js';
import { Req, Status, type BlockNode } from '../block/node.js';
import { createGraph } from '../drivers/index.js';
import { parseSize } from '../util/size.js';
import { hasSwitch, lastValue, parseArgs, UsageError } from './args.js';
import { openImage } from './open-image.js';

export const IO_USAGE = `usage: colo-blk io [-f FMT] [-r] [--image-opts] FILE -c 'CMD' [-c 'CMD' ...]
commands:
  read [-P PATTERN] [-q] [-v] OFF LEN   read and optionally verify a byte pattern
  write [-P PATTERN | -z [-u]] [-f] [-q] OFF LEN
                                        write a pattern (default 0xcd) or zeroes (-u: may unmap; -f: FUA)
  discard [-q] OFF LEN                  discard a range
  flush                                 flush to stable storage
  map                                   allocation over the whole backing chain
  alloc OFF [LEN]                       allocation in the top layer (LEN defaults to 512)
sizes take qemu-io's suffixes: k, M, G, T (binary)
`;

type Out = (line: string) => void;

class CommandError extends Error {}

/** qemu-io's cvtstr: three decimals, ".000" dropped, binary units. */
export function cvtstr(value: number): string {
  const units: Array<[number, string]> = [[2 ** 60, ' EiB'], [2 ** 50, ' PiB'], [2 ** 40, ' TiB'], [2 ** 30, ' GiB'], [2 ** 20, ' MiB'], [2 ** 10, ' KiB']];
  for (const [size, suffix] of units) {
    if (value >= size) return trim3(value / size) + suffix;
  }
  return `${trim3(value)} bytes`;
}

function trim3(v: number): string {
  const s = v.toFixed(3);
  return s.endsWith('.000') ? s.slice(0, -4) : s;
}

function num(text: string | undefined, what: string): number {
  if (text === undefined) throw new CommandError(`missing ${what}`);
  const n = parseSize(text);
  if (n === null) throw new CommandError(`invalid ${what} specified: ${text}`);
  return n;
}

function pattern(text: string): number {
  const n = Number(text.startsWith('0x') || text.startsWith('0X') ? parseInt(text, 16) : parseInt(text, 10));
  if (!Number.isInteger(n) || n < 0 || n > 255) throw new CommandError(`invalid pattern byte: ${text}`);
  return n;
}

function stats(out: Out, bytes: number, start: bigint): void {
  const secs = Math.max(Number(process.hrtime.bigint() - start) / 1e9, 1e-9);
  const whole = Math.floor(secs);
  const frac = Math.floor((secs - whole) * 100);
  out(`${cvtstr(bytes)}, 1 ops; ${String(whole).padStart(2, '0')}.${String(frac).padStart(2, '0')} sec (${cvtstr(bytes / secs)}/sec and ${(1 / secs).toFixed(4)} ops/sec)`);
}

function hexdump(out: Out, offset: number, buf: Buffer): void {
  for (let i = 0; i < buf.length; i += 16) {
    const row = buf.subarray(i, i + 16);
    const hex = [...row].map((b) => b.toString(16).padStart(2, '0')).join(' ').padEnd(47, ' ');
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    out(`${(offset + i).toString(16).padStart(8, '0')}:  ${hex}  ${ascii}`);
  }
}

interface CmdArgs {
  flags: Set<string>;
  pattern?: number;
  positionals: string[];
}

function cmdArgs(words: string[], allowed: string, withPattern: boolean): CmdArgs {
  const flags = new Set<string>();
  const positionals: string[] = [];
  let pat: number | undefined;
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    if (w.startsWith('-') && w.length > 1 && !/^-\d/.test(w)) {
      for (let j = 1; j < w.length; j++) {
        const c = w[j]!;
        if (c === 'P' && withPattern) {
          const rest = w.slice(j + 1) || words[++i];
          if (rest === undefined) throw new CommandError('-P requires a pattern');
          pat = pattern(rest);
          break;
        }
        if (!allowed.includes(c)) throw new CommandError(`invalid option -- '${c}'`);
        flags.add(c);
      }
    } else {
      positionals.push(w);
    }
  }
  const out: CmdArgs = { flags, positionals };
  if (pat !== undefined) out.pattern = pat;
  return out;
}

async function runCommand(line: string, blk: BlockBackend, node: BlockNode, out: Out): Promise<void> {
  const words = line.trim().split(/\s+/).filter((w) => w !== '');
  const [name, ...rest] = words;
  switch (name) {
    case 'read': {
      const a = cmdArgs(rest, 'qv', true);
      const off = num(a.positionals[0], 'offset');
      const len = num(a.positionals[1], 'count');
      const buf = Buffer.alloc(len, a.pattern === undefined ? 0 : (a.pattern ^ 0xff));
      const start = process.hrtime.bigint();
      await io('read', () => blk.read(off, buf));
      if (a.pattern !== undefined) {
        const bad = buf.findIndex((b) => b !== a.pattern);
        if (bad >= 0) {
          out(`Pattern verification failed at offset ${off}, ${len} bytes`);
          throw new CommandError(
            `first mismatch at offset ${off + bad} (0x${(off + bad).toString(16)}): expected 0x${a.pattern.toString(16).padStart(2, '0')}, found 0x${buf[bad]!.toString(16).padStart(2, '0')}`,
          );
        }
      }
      if (a.flags.has('v')) hexdump(out, off, buf);
      if (!a.flags.has('q')) {
        out(`read ${len}/${len} bytes at offset ${off}`);
        stats(out, len, start);
      }
      return;
    }
    case 'write': {
      const a = cmdArgs(rest, 'zuqf', true);
      const off = num(a.positionals[0], 'offset');
      const len = num(a.positionals[1], 'count');
      if (a.flags.has('z') && a.pattern !== undefined) throw new CommandError('-z and -P cannot be specified at the same time');
      if (a.flags.has('u') && !a.flags.has('z')) throw new CommandError('-u requires -z to be specified');
      const fua = a.flags.has('f') ? Req.FUA : 0;
      const start = process.hrtime.bigint();
      if (a.flags.has('z')) {
        await io('write', () => blk.writeZeroes(off, len, fua | (a.flags.has('u') ? Req.MAY_UNMAP : 0)));
      } else {
        await io('write', () => blk.write(off, Buffer.alloc(len, a.pattern ?? 0xcd), fua));
      }
      if (!a.flags.has('q')) {
        out(`wrote ${len}/${len} bytes at offset ${off}`);
        stats(out, len, start);
      }
      return;
    }
    case 'discard': {
      const a = cmdArgs(rest, 'q', false);
      const off = num(a.positionals[0], 'offset');
      const len = num(a.positionals[1], 'count');
      const start = process.hrtime.bigint();
      await io('discard', () => blk.discard(off, len));
      if (!a.flags.has('q')) {
        out(`discard ${len}/${len} bytes at offset ${off}`);
        stats(out, len, start);
      }
      return;
    }
    case 'flush':
      await io('flush', () => blk.flush());
      return;
    case 'map': {
      let off = 0;
      while (off < node.size) {
        const st = await io('map', () => blockStatusAbove(node, null, off, node.size - off));
        // qemu-io's map merges runs with the same answer.
        let len = st.length;
        const allocated = st.depth > 0;
        while (off + len < node.size) {
          const next = await io('map', () => blockStatusAbove(node, null, off + len, node.size - off - len));
          if ((next.depth > 0) !== allocated) break;
          len += next.length;
        }
        out(`${cvtstr(len)} (0x${len.toString(16)}) bytes ${allocated ? '    allocated' : 'not allocated'} at offset ${cvtstr(off)} (0x${off.toString(16)})`);
        off += len;
      }
      return;
    }
    case 'alloc': {
      const off = num(rest[0], 'offset');
      const len = rest[1] === undefined ? 512 : num(rest[1], 'count');
      if (off + len > node.size) throw new CommandError(`offset ${off} + count ${len} is beyond the end of the image`);
      let allocated = 0;
      for (let pos = off; pos < off + len;) {
        const st = await io('alloc', () => node.blockStatus(pos, off + len - pos));
        if (st.flags & Status.ALLOCATED) allocated += st.length;
        pos += st.length;
      }
      out(`${allocated}/${len} bytes allocated at offset ${cvtstr(off)}`);
      return;
    }
    case undefined:
      return;
    default:
      throw new CommandError(`command "${name}" not found`);
  }
}

async function io<T>(op: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (BlockError.is(err)) throw new CommandError(`${op} failed: ${strerror(err.code)}`);
    throw err;
  }
}

export async function ioMain(argv: string[], out: Out = (l) => process.stdout.write(`${l}\n`), errOut: Out = (l) => process.stderr.write(`${l}\n`)): Promise<number> {
  let args;
  try {
    args = parseArgs(argv, { withValue: ['f', 'c', 't', 'cmd', 'format', 'cache'], switches: ['r', 'q', 'U', 'image-opts', 'read-only', 'force-share', 'quiet', 'h', 'help'] });
  } catch (err) {
    if (err instanceof UsageError) {
      errOut(`colo-blk io: ${err.message}`);
      errOut(IO_USAGE.trimEnd());
      return 1;
    }
    throw err;
  }
  if (hasSwitch(args, 'h', 'help')) {
    out(IO_USAGE.trimEnd());
    return 0;
  }
  const filename = args.positionals[0];
  if (filename === undefined || args.positionals.length > 1) {
    errOut(IO_USAGE.trimEnd());
    return 1;
  }
  const readOnly = hasSwitch(args, 'r', 'read-only');
  const graph = createGraph();
  let node: BlockNode;
  try {
    const format = lastValue(args, 'f', 'format');
    node = await openImage(graph, { filename, readOnly, imageOpts: hasSwitch(args, 'image-opts'), ...(format ? { format } : {}) });
  } catch (err) {
    errOut(`colo-blk io: can't open device ${filename}: ${(err as Error).message}`);
    return 1;
  }
  const blk = new BlockBackend('io', node);
  const print = hasSwitch(args, 'q', 'quiet') ? () => {} : out;
  let failed = false;
  try {
    for (const cmd of [...(args.options.get('c') ?? []), ...(args.options.get('cmd') ?? [])]) {
      const name = cmd.trim().split(/\s+/)[0];
      if (readOnly && (name === 'write' || name === 'discard')) {
        errOut('colo-blk io: Block node is read-only');
        failed = true;
        continue;
      }
      try {
        await runCommand(cmd, blk, node, print);
      } catch (err) {
        if (!(err instanceof CommandError)) throw err;
        out(err.message);
        failed = true;
      }
    }
  } finally {
    blk.detach();
    try {
      await graph.closeAll();
    } catch (err) {
      errOut(`colo-blk io: closing the image failed: ${(err as Error).message}`);
      failed = true;
    }
  }
  return failed ? 1 : 0;
}
