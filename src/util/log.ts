/**
 * Structured logs: one JSON object per line on stderr, with a level, an
 * event name and its fields. Components get a child logger that adds their
 * own fields (`component`, `node`, `export`).
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface LogSink {
  write(line: string): void;
}

let threshold: number = RANK[(process.env.COLO_BLK_LOG_LEVEL as LogLevel | undefined) ?? 'info'] ?? RANK.info;
let sink: LogSink = { write: (line) => process.stderr.write(line) };

export function setLogLevel(level: LogLevel): void {
  threshold = RANK[level];
}

export function isLogLevel(text: string): text is LogLevel {
  return text in RANK;
}

/** Redirects every logger (tests capture lines this way). */
export function setLogSink(next: LogSink): void {
  sink = next;
}

export class Logger {
  constructor(private readonly fields: Readonly<Record<string, unknown>> = {}) {}

  child(fields: Record<string, unknown>): Logger {
    return new Logger({ ...this.fields, ...fields });
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] >= threshold;
  }

  debug(event: string, fields?: Record<string, unknown>): void { this.log('debug', event, fields); }
  info(event: string, fields?: Record<string, unknown>): void { this.log('info', event, fields); }
  warn(event: string, fields?: Record<string, unknown>): void { this.log('warn', event, fields); }
  error(event: string, fields?: Record<string, unknown>): void { this.log('error', event, fields); }

  log(level: LogLevel, event: string, fields?: Record<string, unknown>): void {
    if (RANK[level] < threshold) return;
    const record: Record<string, unknown> = { t: new Date().toISOString(), level, event, ...this.fields, ...fields };
    sink.write(`${JSON.stringify(record, replacer)}\n`);
  }
}

function replacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    const out: Record<string, unknown> = { message: value.message };
    const code = (value as { code?: unknown }).code;
    if (code !== undefined) out.code = code;
    return out;
  }
  if (typeof value === 'bigint') return value.toString();
  return value;
}

export const rootLogger = new Logger();
