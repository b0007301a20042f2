/**
 * `colo-blk img`: create, info, map and check, with qemu-img's options,
 * output and exit codes, on the same drivers the daemon uses.
 */
import { open as openFile, stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { blockStatusAbove, belowInChain } from '../block/chain.js';
import { BlockError } from '../block/errors.js';
import { Status, type BlockNode } from '../block/node.js';
import { createGraph } from '../drivers/index.js';
import { checkQcow2, createQcow2, readQcow2Info, type Qcow2CheckResult } from '../drivers/qcow2/index.js';
import { hasSwitch, lastValue, parseArgs, UsageError, type ParsedArgs } from './args.js';
import { openImage, probeFormat } from './open-image.js';
import { parseSize } from '../util/size.js';

export const IMG_USAGE = `usage: colo-blk img <command> [options]
  create [-q] [-f qcow2|raw] [-b BACKING [-F FMT]] [-o cluster_size=N,refcount_bits=N,lazy_refcounts=on] FILE [SIZE]
  info [-f FMT] [--output=human|json] FILE
  map [-f FMT] [--output=human|json] FILE
  check [-q] [-f FMT] [--output=human|json] [-r leaks|all] FILE
exit codes of check: 0 clean, 1 check could not complete, 2 corruptions, 3 leaks, 63 format without checks
`;

type Out = (text: string) => void;

interface Io {
  out: Out;
  err: Out;
}

/** QEMU's size_to_str: three significant digits, binary units. */
export function sizeToStr(bytes: number): string {
  const suffixes = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];
  // frexp(val / (1000/1024)) exponent, as QEMU computes it: the unit keeps the number under 1000.
  const scaled = bytes / (1000 / 1024);
  const exp = scaled > 0 ? Math.floor(Math.log2(scaled)) + 1 : 0;
  const i = Math.max(0, Math.min(suffixes.length - 1, Math.floor((exp - 1) / 10)));
  const v = bytes / 2 ** (i * 10);
  return `${formatG3(v)} ${suffixes[i]}B`;
}

function formatG3(v: number): string {
  if (v === 0) return '0';
  const s = v.toPrecision(3);
  return s.includes('e') ? s : s.includes('.') ? s.replace(/\.?0+$/, '') : s;
}

function json(value: unknown): string {
  return JSON.stringify(value, null, 4);
}

// ----------------------------------------------------------------- create

async function create(args: ParsedArgs, io: Io): Promise<number> {
  const [file, sizeText] = args.positionals;
  if (!file || args.positionals.length > 2) throw new UsageError('create needs FILE [SIZE]');
  const format = lastValue(args, 'f') ?? 'raw';
  const o = new Map<string, string>();
  for (const list of args.options.get('o') ?? []) {
    for (const item of list.split(',')) {
      const eq = item.indexOf('=');
      if (eq < 0) throw new UsageError(`Invalid option '${item}'`);
      o.set(item.slice(0, eq), item.slice(eq + 1));
    }
  }
  const backingFile = lastValue(args, 'b') ?? o.get('backing_file');
  const backingFormat = lastValue(args, 'F') ?? o.get('backing_fmt');
  let size = sizeText === undefined ? undefined : parseSize(sizeText);
  if (sizeText !== undefined && size === null) {
    io.err(`colo-blk img: Invalid image size specified. You may use k, M, G, T, P or E suffixes for`);
    io.err('colo-blk img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
    return 1;
  }
  if (format === 'raw') {
    if (backingFile) throw new BlockError('ENOTSUP', "Backing file not supported for file format 'raw'");
    if (size === undefined || size === null) throw new UsageError('Image creation needs a size parameter');
    if (!hasSwitch(args, 'q')) io.out(`Formatting '${file}', fmt=raw size=${size}`);
    const handle = await openFile(file, 'w');
    try {
      await handle.truncate(size);
    } finally {
      await handle.close();
    }
    return 0;
  }
  if (format !== 'qcow2') throw new BlockError('EINVAL', `Unknown file format '${format}'`);
  if (backingFile && !backingFormat) {
    io.err(`colo-blk img: ${file}: Backing file specified without backing format`);
    return 1;
  }
  if (size === undefined || size === null) {
    if (!backingFile) throw new UsageError('Image creation needs a size parameter');
    const path = isAbsolute(backingFile) ? backingFile : resolve(dirname(file), backingFile);
    size = await imageSize(path, backingFormat);
  }
  const clusterSize = o.has('cluster_size') ? parseSize(o.get('cluster_size')!) : 65536;
  const refcountBits = o.has('refcount_bits') ? Number(o.get('refcount_bits')) : 16;
  const lazy = o.get('lazy_refcounts') === 'on';
  for (const k of o.keys()) {
    if (!['cluster_size', 'refcount_bits', 'lazy_refcounts', 'backing_file', 'backing_fmt', 'compat', 'size'].includes(k)) {
      io.err(`colo-blk img: Invalid parameter '${k}'`);
      return 1;
    }
  }
  if (clusterSize === null) throw new UsageError('invalid cluster_size');
  if (!hasSwitch(args, 'q')) {
    const backing = backingFile ? ` backing_file=${backingFile} backing_fmt=${backingFormat}` : '';
    io.out(`Formatting '${file}', fmt=qcow2 cluster_size=${clusterSize} extended_l2=off compression_type=zlib size=${size}${backing} lazy_refcounts=${lazy ? 'on' : 'off'} refcount_bits=${refcountBits}`);
  }
  await createQcow2(file, {
    size, clusterSize, refcountBits, lazyRefcounts: lazy,
    ...(backingFile ? { backingFile } : {}), ...(backingFormat ? { backingFormat } : {}),
  });
  return 0;
}

async function imageSize(path: string, format: string | undefined): Promise<number> {
  const graph = createGraph();
  try {
    const node = await openImage(graph, { filename: path, readOnly: true, ...(format ? { format } : {}) });
    return node.size;
  } finally {
    await graph.closeAll();
  }
}

// ------------------------------------------------------------------- info

async function info(args: ParsedArgs, io: Io): Promise<number> {
  const file = args.positionals[0];
  if (!file) throw new UsageError('info needs FILE');
  const format = lastValue(args, 'f') ?? (await probeFormat(file));
  const st = await stat(file);
  const actual = st.blocks * 512;
  const out: Record<string, unknown> = {};
  let virtualSize: number;
  if (format === 'qcow2') {
    const q = await readQcow2Info(file);
    virtualSize = q.virtualSize;
    if (q.backingFormat) out['backing-filename-format'] = q.backingFormat;
    out['virtual-size'] = q.virtualSize;
    out.filename = file;
    out['cluster-size'] = q.clusterSize;
    out.format = 'qcow2';
    out['actual-size'] = actual;
    out['format-specific'] = {
      type: 'qcow2',
      data: q.version === 3
        ? { compat: '1.1', 'compression-type': q.compressionType, 'lazy-refcounts': q.lazyRefcounts, 'refcount-bits': q.refcountBits, corrupt: q.corrupt, 'extended-l2': q.extendedL2 }
        : { compat: '0.10', 'compression-type': q.compressionType, 'refcount-bits': q.refcountBits },
    };
    if (q.backingFile) {
      out['full-backing-filename'] = isAbsolute(q.backingFile) ? q.backingFile : resolve(dirname(file), q.backingFile).replace(`${process.cwd()}/`, '');
      out['backing-filename'] = q.backingFile;
    }
    out['dirty-flag'] = q.dirty;
  } else {
    virtualSize = await imageSize(file, format);
    Object.assign(out, { 'virtual-size': virtualSize, filename: file, format, 'actual-size': actual, 'dirty-flag': false });
  }
  if (lastValue(args, 'output') === 'json') {
    io.out(json(out));
    return 0;
  }
  const lines = [
    `image: ${file}`,
    `file format: ${format}`,
    `virtual size: ${sizeToStr(virtualSize)} (${virtualSize} bytes)`,
    `disk size: ${sizeToStr(actual)}`,
  ];
  if (format === 'qcow2') {
    lines.push(`cluster_size: ${String(out['cluster-size'])}`);
    if (out['backing-filename']) lines.push(`backing file: ${String(out['backing-filename'])}`);
    if (out['backing-filename-format']) lines.push(`backing file format: ${String(out['backing-filename-format'])}`);
    const data = (out['format-specific'] as { data: Record<string, unknown> }).data;
    lines.push('Format specific information:');
    for (const [k, v] of Object.entries(data)) lines.push(`    ${k.replace(/-/g, ' ')}: ${String(v)}`);
  }
  io.out(lines.join('\n'));
  return 0;
}

// -------------------------------------------------------------------- map

interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
  filename?: string;
}

function chainLength(top: BlockNode): number {
  let n = 0;
  for (let l: BlockNode | null = top; l; l = belowInChain(l)) if (!l.isFilter) n++;
  return n;
}

export async function mapEntries(top: BlockNode): Promise<MapEntry[]> {
  const entries: MapEntry[] = [];
  const bottomDepth = chainLength(top) - 1;
  for (let off = 0; off < top.size;) {
    const st = await blockStatusAbove(top, null, off, top.size - off);
    const present = st.depth > 0;
    const e: MapEntry = {
      start: off,
      length: st.length,
      depth: present ? st.depth - 1 : bottomDepth,
      present,
      zero: (st.flags & Status.ZERO) !== 0,
      data: (st.flags & Status.DATA) !== 0,
    };
    if (st.flags & Status.OFFSET_VALID && st.offset >= 0) {
      e.offset = st.offset;
      e.filename = st.layer?.file?.filename ?? st.layer?.filename ?? '';
    }
    const prev = entries[entries.length - 1];
    if (prev && prev.depth === e.depth && prev.present === e.present && prev.zero === e.zero && prev.data === e.data
      && prev.filename === e.filename
      && (prev.offset === undefined) === (e.offset === undefined)
      && (prev.offset === undefined || prev.offset + prev.length === e.offset)) {
      prev.length += e.length;
    } else {
      entries.push(e);
    }
    off += st.length;
  }
  return entries;
}

async function map(args: ParsedArgs, io: Io): Promise<number> {
  const file = args.positionals[0];
  if (!file) throw new UsageError('map needs FILE');
  const graph = createGraph();
  try {
    const format = lastValue(args, 'f');
    const node = await openImage(graph, { filename: file, readOnly: true, imageOpts: hasSwitch(args, 'image-opts'), ...(format ? { format } : {}) });
    const entries = await mapEntries(node);
    if (lastValue(args, 'output') === 'json') {
      const rows = entries.map((e) => {
        const { filename: _f, ...rest } = e;
        return `{ ${Object.entries(rest).map(([k, v]) => `"${k}": ${JSON.stringify(v)}`).join(', ')}}`;
      });
      io.out(`[${rows.join(',\n')}]`);
    } else {
      const lines = [`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File`];
      for (const e of entries) {
        if (!e.data || e.zero || e.offset === undefined) continue;
        const hex = (n: number): string => (n === 0 ? '0' : `0x${n.toString(16)}`);
        lines.push(`${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${hex(e.offset).padEnd(16)}${e.filename}`);
      }
      io.out(lines.join('\n'));
    }
    return 0;
  } finally {
    await graph.closeAll();
  }
}

// ------------------------------------------------------------------ check

function checkReport(r: Qcow2CheckResult, file: string, io: Io, asJson: boolean): void {
  if (asJson) {
    const out: Record<string, unknown> = { 'image-end-offset': r.imageEndOffset, 'total-clusters': r.totalClusters };
    if (r.corruptions) out.corruptions = r.corruptions;
    if (r.leaks) out.leaks = r.leaks;
    if (r.corruptionsFixed) out['corruptions-fixed'] = r.corruptionsFixed;
    if (r.leaksFixed) out['leaks-fixed'] = r.leaksFixed;
    out['check-errors'] = r.checkErrors;
    if (r.allocatedClusters) out['allocated-clusters'] = r.allocatedClusters;
    if (r.fragmentedClusters) out['fragmented-clusters'] = r.fragmentedClusters;
    if (r.compressedClusters) out['compressed-clusters'] = r.compressedClusters;
    out.filename = file;
    out.format = 'qcow2';
    io.out(json(out));
    return;
  }
  for (const m of r.messages) io.err(m);
  const lines: string[] = [];
  if (r.corruptionsFixed || r.leaksFixed) {
    lines.push(`The following inconsistencies were found and repaired:\n\n    ${r.leaksFixed} leaked clusters\n    ${r.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...`);
  }
  if (r.corruptions === 0 && r.leaks === 0 && r.checkErrors === 0) {
    lines.push('No errors were found on the image.');
  } else {
    if (r.corruptions) lines.push(`\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.`);
    if (r.leaks) lines.push(`\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.`);
    if (r.checkErrors) lines.push(`\n${r.checkErrors} internal errors have occurred during the check.`);
  }
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    const pct = (n: number, d: number): string => `${((100 * n) / d).toFixed(2)}%`;
    lines.push(`${r.allocatedClusters}/${r.totalClusters} = ${pct(r.allocatedClusters, r.totalClusters)} allocated, ${pct(r.fragmentedClusters, r.allocatedClusters)} fragmented, ${pct(r.compressedClusters, r.allocatedClusters)} compressed clusters`);
  }
  if (r.imageEndOffset) lines.push(`Image end offset: ${r.imageEndOffset}`);
  io.out(lines.join('\n'));
}

async function check(args: ParsedArgs, io: Io): Promise<number> {
  const file = args.positionals[0];
  if (!file) throw new UsageError('check needs FILE');
  const format = lastValue(args, 'f') ?? (await probeFormat(file));
  if (format !== 'qcow2') {
    io.err('colo-blk img: This image format does not support checks');
    return 63;
  }
  const repair = lastValue(args, 'r');
  if (repair !== undefined && repair !== 'leaks' && repair !== 'all') {
    io.err(`colo-blk img: Unknown option value for -r (expecting 'leaks' or 'all'): ${repair}`);
    return 1;
  }
  let result: Qcow2CheckResult;
  try {
    result = await checkQcow2(file, repair ? { repair } : {});
  } catch (err) {
    io.err(`colo-blk img: Could not check '${file}': ${(err as Error).message}`);
    return 1;
  }
  checkReport(result, file, io, lastValue(args, 'output') === 'json');
  if (result.checkErrors) return 1;
  if (result.corruptions) return 2;
  if (result.leaks) return 3;
  return 0;
}

// ------------------------------------------------------------------- main

export async function imgMain(argv: string[], io: Io = {
  out: (t) => process.stdout.write(`${t}\n`),
  err: (t) => process.stderr.write(`${t}\n`),
}): Promise<number> {
  const [sub, ...rest] = argv;
  const spec = { withValue: ['f', 'F', 'b', 'o', 'r', 'output', 'format'], switches: ['q', 'U', 'image-opts', 'force-share', 'h', 'help'] };
  try {
    const args = parseArgs(rest, spec);
    switch (sub) {
      case 'create': return await create(args, io);
      case 'info': return await info(args, io);
      case 'map': return await map(args, io);
      case 'check': return await check(args, io);
      case undefined: case 'help': case '-h': case '--help':
        io.out(IMG_USAGE.trimEnd());
        return sub === undefined ? 1 : 0;
      default:
        io.err(`colo-blk img: Command not found: ${sub}`);
        return 1;
    }
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`colo-blk img: ${err.message}`);
      io.err(IMG_USAGE.trimEnd());
      return 1;
    }
    if (BlockError.is(err)) {
      io.err(`colo-blk img: ${err.message}`);
      return 1;
    }
    throw err;
  }
}
