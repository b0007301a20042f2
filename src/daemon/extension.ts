/**
 * How optional parts of the daemon (the QMP monitor; later others) plug
 * into `colo-blk daemon`: they claim command-line options, apply them in
 * command-line order against the daemon, may add fields to the ready line,
 * and are closed first on shutdown.
 */
import type { Daemon } from './daemon.js';

/** What an extension may ask of the running daemon process. */
export interface DaemonHost {
  /** Shuts the daemon down as a signal would (QMP `quit`). */
  quit(reason: string): void;
}

export interface DaemonExtension {
  /** Option names without the dashes (`qmp`, `chardev`, `monitor`). */
  readonly options: readonly string[];
  /** Applies one option, in command-line order. */
  apply(option: string, value: string, daemon: Daemon, host: DaemonHost): Promise<void>;
  /** Fields added to the ready line (for example where the monitors listen). */
  describe?(): Record<string, unknown>;
  /** Stops the extension (close monitors) before the daemon shuts down. */
  close?(): Promise<void>;
}
