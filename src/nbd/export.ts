/**
 * An NBD export: a name, a BlockBackend on the exported node, and the
 * counters the daemon reports. Every connection to the export shares the
 * node (which is what makes CAN_MULTI_CONN honest) and one range lock that
 * keeps overlapping requests in arrival order.
 */
import { BlockBackend } from '../block/backend.js';
import { BlockError } from '../block/errors.js';
import type { BlockNode } from '../block/node.js';
import { RangeLock } from '../block/range-lock.js';
import type { ExportDescriptor } from './negotiation.js';

export interface ExportStats {
  /** Requests answered (successfully or not). */
  requests: number;
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  /** Requests answered with an error. */
  errors: number;
  /** Requests being served now. */
  inFlight: number;
  /** Open connections in transmission on this export. */
  connections: number;
}

export interface ExportOptions {
  name: string;
  node: BlockNode;
  writable?: boolean;
  description?: string;
  /** Make every write durable before answering it (QEMU's writethrough export option). */
  writethrough?: boolean;
  /** Offer the `qemu:allocation-depth` context (QEMU's allocation-depth option, off by default). */
  allocationDepth?: boolean;
}

export class NbdExport implements ExportDescriptor {
  readonly name: string;
  readonly description: string;
  readonly writable: boolean;
  readonly writethrough: boolean;
  readonly allocationDepth: boolean;
  readonly backend: BlockBackend;
  readonly lock = new RangeLock();
  readonly stats: ExportStats = {
    requests: 0, reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, errors: 0, inFlight: 0, connections: 0,
  };

  constructor(options: ExportOptions) {
    this.name = options.name;
    this.description = options.description ?? '';
    this.writable = options.writable ?? false;
    this.writethrough = options.writethrough ?? false;
    this.allocationDepth = options.allocationDepth ?? false;
    if (this.writable && options.node.readOnly) {
      throw new BlockError('EROFS', `Cannot export read-only node '${options.node.nodeName}' as writable`);
    }
    this.backend = new BlockBackend(`nbd-export:${options.name}`, options.node);
  }

  /** The exported node (it follows graph.replaceNode through the backend). */
  get node(): BlockNode {
    return this.backend.node;
  }

  get size(): number {
    return this.backend.attached ? this.backend.size : 0;
  }

  private lastErrorLog = 0;
  private unloggedErrors = 0;

  /**
   * Whether a failed request should be logged now: at most one line a second
   * per export, so a failing disk cannot flood the log. Returns the number of
   * failures since the last logged one (to put in that line), or null.
   */
  errorLogSlot(now = Date.now()): number | null {
    if (now - this.lastErrorLog < 1000) {
      this.unloggedErrors++;
      return null;
    }
    const skipped = this.unloggedErrors;
    this.lastErrorLog = now;
    this.unloggedErrors = 0;
    return skipped;
  }

  /** Lets go of the node; the export must have no connections left. */
  release(): void {
    this.backend.detach();
  }
}
