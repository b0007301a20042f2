/**
 * `colo-blk qmp SOCKET COMMAND [JSON | key=value ...]`: runs one QMP command
 * against colo-blk or QEMU and prints its result.
 *
 * Arguments are one JSON object, or key=value pairs in qmp-shell's style:
 * dotted keys nest (`addr.type=inet`), a value that parses as JSON is used
 * as such (`writable=true`, `size=1024`, `port='"10809"'` for a string of
 * digits), anything else is a string. Exit status: 0 on success, 1 when the
 * server answers with an error (printed as `Class: desc`), 2 for usage
 * errors and connection failures.
 */
import { parseQmpAddress } from '../control/address.js';
import { QmpError } from '../control/errors.js';
import { parseJsonText } from '../control/json-stream.js';
import { isQmpObject, toPlain, type QmpValue } from '../control/json-value.js';
import { QmpClient, type QmpClientAddress } from '../control/qmp-client.js';

const USAGE = `usage: colo-blk qmp [options] SOCKET COMMAND [JSON | key=value ...]

  SOCKET      a unix socket path (or unix:PATH), or tcp:HOST:PORT
  COMMAND     a QMP command name (query-commands lists them)
  JSON        the arguments as one JSON object
  key=value   arguments; dotted keys nest; values are JSON when they parse
              as JSON (true, 42, [..], {..}, '"quoted"'), else strings

options:
  -t, --timeout SECONDS   give up after this long (default 30)
  -w, --wait SECONDS      wait this long for the socket to appear (default 0)
  -c, --compact           print the result on one line
  -h, --help              show this help

Prints the command's result as JSON. Exit status 0 on success, 1 when the
server replies with an error (printed as "Class: desc" on stderr), 2 on
usage errors and connection failures.
`;

export class UsageError extends Error {}

export interface QmpInvocation {
  address: QmpClientAddress;
  command: string;
  args: Record<string, unknown> | undefined;
  timeoutMs: number;
  waitMs: number;
  compact: boolean;
}

export function parseQmpArgs(argv: readonly string[]): QmpInvocation | 'help' {
  let timeoutMs = 30_000;
  let waitMs = 0;
  let compact = false;
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (positional.length < 2 && a.startsWith('-') && a !== '-') {
      const seconds = (): number => {
        const v = Number(argv[++i]);
        if (!Number.isFinite(v) || v < 0) throw new UsageError(`${a} needs a number of seconds`);
        return Math.round(v * 1000);
      };
      if (a === '-h' || a === '--help') return 'help';
      else if (a === '-t' || a === '--timeout') timeoutMs = seconds();
      else if (a === '-w' || a === '--wait') waitMs = seconds();
      else if (a === '-c' || a === '--compact') compact = true;
      else throw new UsageError(`unknown option ${a}`);
      continue;
    }
    positional.push(a);
  }
  if (positional.length < 2) throw new UsageError('SOCKET and COMMAND are required');
  const [socket, command, ...rest] = positional as [string, string, ...string[]];
  return { address: parseAddress(socket), command, args: parseCommandArgs(rest), timeoutMs, waitMs, compact };
}

function parseAddress(text: string): QmpClientAddress {
  try {
    return parseQmpAddress(text);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export function parseCommandArgs(words: readonly string[]): Record<string, unknown> | undefined {
  if (words.length === 0) return undefined;
  if (words.length === 1 && words[0]!.trimStart().startsWith('{')) {
    let value: QmpValue;
    try {
      value = parseJsonText(words[0]!);
    } catch (err) {
      throw new UsageError(`invalid JSON arguments: ${(err as Error).message}`);
    }
    if (!isQmpObject(value)) throw new UsageError('JSON arguments must be an object');
    return value;
  }
  const root: Record<string, unknown> = {};
  for (const word of words) {
    const eq = word.indexOf('=');
    if (eq <= 0) throw new UsageError(`expected key=value, got '${word}'`);
    const path = word.slice(0, eq).split('.');
    const raw = word.slice(eq + 1);
    let node = root;
    for (let i = 0; i < path.length - 1; i++) {
      const seg = path[i]!;
      const next = node[seg];
      if (next === undefined) node = (node[seg] = {}) as Record<string, unknown>;
      else if (typeof next === 'object' && next !== null && !Array.isArray(next)) node = next as Record<string, unknown>;
      else throw new UsageError(`'${path.slice(0, i + 1).join('.')}' is used both as a value and as an object`);
    }
    const leaf = path[path.length - 1]!;
    if (path.some((p) => p === '')) throw new UsageError(`invalid key '${word.slice(0, eq)}'`);
    if (leaf in node) throw new UsageError(`'${word.slice(0, eq)}' is given twice`);
    node[leaf] = jsonOrString(raw);
  }
  return root;
}

function jsonOrString(raw: string): unknown {
  try {
    return parseJsonText(raw);
  } catch {
    return raw;
  }
}

function format(value: unknown, compact: boolean): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v), compact ? undefined : 2);
}

export async function qmpMain(argv: readonly string[]): Promise<number> {
  let inv: QmpInvocation | 'help';
  try {
    inv = parseQmpArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`colo-blk qmp: ${err.message}\n${USAGE}`);
    return 2;
  }
  if (inv === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  let client: QmpClient;
  try {
    client = await QmpClient.connect(inv.address, { waitMs: inv.waitMs, connectTimeoutMs: inv.timeoutMs });
  } catch (err) {
    process.stderr.write(`colo-blk qmp: ${(err as Error).message}\n`);
    return 2;
  }
  try {
    const result = await client.execute(inv.command, inv.args, { timeoutMs: inv.timeoutMs });
    process.stdout.write(`${format(toPlain(result as QmpValue), inv.compact)}\n`);
    return 0;
  } catch (err) {
    if (err instanceof QmpError) {
      process.stderr.write(`${err.class}: ${err.desc}\n`);
      return 1;
    }
    process.stderr.write(`colo-blk qmp: ${(err as Error).message}\n`);
    return 2;
  } finally {
    await client.close();
  }
}
