/**
 * A small getopt for the qemu-img/qemu-io style command lines: short flags
 * that may take a value (`-f qcow2`, `-fqcow2`), long options
 * (`--output=json`, `--output json`), repeated options, and positionals.
 */

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface OptionSpec {
  /** Short letters and long names that take a value. */
  withValue?: readonly string[];
  /** Short letters and long names that are plain switches. */
  switches?: readonly string[];
}

export interface ParsedArgs {
  /** Every value given for an option, in order; switches map to [''] per use. */
  options: Map<string, string[]>;
  positionals: string[];
}

export function parseArgs(argv: readonly string[], spec: OptionSpec): ParsedArgs {
  const withValue = new Set(spec.withValue ?? []);
  const switches = new Set(spec.switches ?? []);
  const options = new Map<string, string[]>();
  const positionals: string[] = [];
  const add = (name: string, value: string): void => {
    const list = options.get(name);
    if (list) list.push(value);
    else options.set(name, [value]);
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      if (withValue.has(name)) {
        if (eq >= 0) add(name, arg.slice(eq + 1));
        else if (i + 1 < argv.length) add(name, argv[++i]!);
        else throw new UsageError(`option '--${name}' requires an argument`);
      } else if (switches.has(name)) {
        if (eq >= 0) throw new UsageError(`option '--${name}' doesn't allow an argument`);
        add(name, '');
      } else {
        throw new UsageError(`unrecognized option '${arg}'`);
      }
      continue;
    }
    if (arg.startsWith('-') && arg.length > 1) {
      for (let j = 1; j < arg.length; j++) {
        const letter = arg[j]!;
        if (withValue.has(letter)) {
          const rest = arg.slice(j + 1);
          if (rest !== '') add(letter, rest);
          else if (i + 1 < argv.length) add(letter, argv[++i]!);
          else throw new UsageError(`option requires an argument -- '${letter}'`);
          break;
        }
        if (!switches.has(letter)) throw new UsageError(`invalid option -- '${letter}'`);
        add(letter, '');
      }
      continue;
    }
    positionals.push(arg);
  }
  return { options, positionals };
}

export function lastValue(args: ParsedArgs, ...names: string[]): string | undefined {
  let found: string | undefined;
  for (const n of names) {
    const v = args.options.get(n);
    if (v && v.length > 0) found = v[v.length - 1];
  }
  return found;
}

export function hasSwitch(args: ParsedArgs, ...names: string[]): boolean {
  return names.some((n) => args.options.has(n));
}
