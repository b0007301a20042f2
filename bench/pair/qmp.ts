/**
 * The harness's QMP connection: the project's QmpClient, with every
 * command, its reply and its round trip appended to qmp-trace.jsonl
 * (fast polls excepted), and timed commands for the measurements.
 */
import { appendFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { QmpClient } from '../../src/control/qmp-client.js';

export class TracedQmp {
  /** When set, every traced command is also appended here as QMP JSON (a recipe for the report). */
  recording: string[] | null = null;

  private constructor(readonly who: string, readonly client: QmpClient, private readonly tracePath: string) {}

  /** Connects once the process has created its socket (it is polled for up to `waitMs`). */
  static async connect(who: string, socketPath: string, tracePath: string, waitMs = 15_000): Promise<TracedQmp> {
    const client = await QmpClient.connect(socketPath, { waitMs, connectTimeoutMs: 15_000, commandTimeoutMs: 300_000 });
    return new TracedQmp(who, client, tracePath);
  }

  /** Runs a command and traces it. */
  async run<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return (await this.timed<T>(command, args)).value;
  }

  /** Runs a command; `ms` is its round trip as the harness sees it. */
  async timed<T = unknown>(command: string, args?: Record<string, unknown>): Promise<{ ms: number; value: T }> {
    const t0 = performance.now();
    try {
      const value = await this.client.execute<T>(command, args);
      const ms = performance.now() - t0;
      this.trace(command, args, { return: value }, ms);
      return { ms, value };
    } catch (err) {
      this.trace(command, args, { error: (err as Error).message }, performance.now() - t0);
      throw new Error(`${this.who}: QMP ${command} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Runs a command without tracing it (1 ms polling loops). */
  quiet<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.client.execute<T>(command, args);
  }

  async close(): Promise<void> {
    await this.client.close().catch(() => undefined);
  }

  private trace(command: string, args: Record<string, unknown> | undefined, result: unknown, ms: number): void {
    this.recording?.push(JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args }));
    const line = { who: this.who, t: new Date().toISOString(), ms: Math.round(ms * 1000) / 1000, execute: command, arguments: args, ...(result as object) };
    appendFileSync(this.tracePath, `${JSON.stringify(line)}\n`);
  }
}
