/**
 * The `replication` block filter (QEMU's block/replication.c), over `file`:
 * on the primary an NBD client (forwarded writes, errors latched, the writer
 * told success), on the secondary the active disk of the chain
 * active -> hidden -> secondary disk.
 *
 * Request semantics are QEMU's: reads and writes are admitted by stage and
 * mode (section 2 of the spec); write-zeroes becomes a write of zeroes;
 * discard succeeds and does nothing; FUA becomes a flush after the write;
 * flush goes to every child. Control operations (start, checkpoint,
 * get-error, stop) follow QEMU's results and messages, except where
 * docs/replication.md says colo-blk does better.
 */
import { blockStatusAbove } from '../block/chain.js';
import { BlockError } from '../block/errors.js';
import type { BlockGraph } from '../block/graph.js';
import { BlockNode, Req, Status, type BlockStatus } from '../block/node.js';
import { rootLogger, type Logger } from '../util/log.js';
import { Errors } from './errors.js';
import { DEFAULT_FORWARD_WINDOW, ForwardWindow, type ForwardWindowLimits } from './forward-window.js';
import { replicationRegistry, type ReplicationRegistry } from './registry.js';
import { SecondaryReplication, type ReplicationHost } from './secondary.js';
import type { DiskRole, FailedOperation, LatchedError, ReplicationMode, Stage } from './stage.js';
import { collectStatus, type ReplicationNodeStatus } from './status.js';

/** Largest forwarded write whose payload the primary copies instead of waiting for the socket (see ForwardWindow). */
const COPY_MAX = 64 * 1024;

/** Source of write-zeroes payloads; never written to. */
const ZEROES = Buffer.alloc(1 << 20);

export class ReplicationNode extends BlockNode {
  readonly driver = 'replication';
  override readonly isFilter = true;
  readonly log: Logger;

  private stageValue: Stage = 'none';
  /** At most one per disk, oldest first. */
  private latched: LatchedError[] = [];
  private readonly registry: ReplicationRegistry;
  private readonly secondary: SecondaryReplication | null;
  private control: Promise<unknown> = Promise.resolve();
  /** Primary only: replicated writes answered to the writer but not yet by the secondary. */
  readonly window: ForwardWindow | null;

  constructor(
    readonly graph: BlockGraph,
    nodeName: string | undefined,
    readOnly: boolean,
    file: BlockNode,
    readonly mode: ReplicationMode,
    readonly topId: string | null,
    windowLimits: ForwardWindowLimits = DEFAULT_FORWARD_WINDOW,
  ) {
    super(nodeName, readOnly);
    this.window = mode === 'primary' ? new ForwardWindow(windowLimits) : null;
    this.setChild('file', file);
    this.log = rootLogger.child({ component: 'replication', node: this.nodeName, mode });
    this.registry = replicationRegistry(graph);
    this.secondary = mode === 'secondary' ? new SecondaryReplication(this.host()) : null;
    this.registry.register(this);
  }

  override get size(): number {
    return this.file?.size ?? 0;
  }

  get stage(): Stage {
    return this.stageValue;
  }

  /** Latched errors with the detail QEMU drops (one per disk, oldest first); empty when healthy. */
  get latchedErrors(): LatchedError[] {
    return this.latched.map((e) => ({ ...e }));
  }

  /** The secondary machinery (backup and commit jobs, disks); null on a primary. */
  get secondarySide(): SecondaryReplication | null {
    return this.secondary;
  }

  // ------------------------------------------------------------- control

  start(mode: ReplicationMode): Promise<void> {
    return this.serial(async () => {
      // A promoted secondary ignores start (continuous replication).
      if (this.stageValue === 'done' || this.stageValue === 'failover') return;
      if (this.stageValue !== 'none') throw Errors.runningOrDone();
      if (mode !== this.mode) throw Errors.modeMismatch(this.mode, mode);
      if (this.secondary) await this.secondary.start();
      else this.setStage('running');
      this.latched = [];
    });
  }

  checkpoint(): Promise<void> {
    return this.serial(async () => {
      if (this.stageValue === 'done' || this.stageValue === 'failover') return;
      if (this.secondary) await this.secondary.checkpoint();
      // Whatever the primary acknowledged before the checkpoint is on the secondary when it returns.
      else await this.window!.settled();
    });
  }

  /** Throws QEMU's get_error result; returns when there is nothing to report. */
  getError(): void {
    if (this.stageValue === 'none') throw Errors.notRunning();
    if (this.latched.length > 0) throw Errors.ioError();
  }

  /**
   * Primary: DONE. Secondary with failover: returns once the commit has
   * started (await `failoverSettled` for its end). Secondary without
   * failover: the clean stop described in docs/replication.md.
   */
  stop(failover: boolean): Promise<void> {
    return this.serial(async () => {
      if (this.stageValue === 'done' || this.stageValue === 'failover') return;
      if (this.stageValue !== 'running') throw Errors.notRunning();
      if (this.secondary) {
        await this.secondary.stop(failover);
        return;
      }
      // A clean stop leaves the secondary with everything acknowledged; a
      // failover gives the secondary up, so a dead link must not hold it.
      if (!failover) await this.window!.settled();
      this.setStage('done');
      this.latched = [];
    });
  }

  /** Resolves when a failover commit (if any) has ended and the stage is final for it. */
  failoverSettled(): Promise<void> {
    return this.secondary ? this.secondary.settled() : Promise.resolve();
  }

  /** colo-blk's detailed status; synchronous, from counters the node keeps. */
  status(): ReplicationNodeStatus {
    return collectStatus(this, this.secondary);
  }

  /** @internal For the registry. */
  implicitNodes(): BlockNode[] {
    return this.secondary?.implicitNodes() ?? [];
  }

  /** @internal Whether `node` is this running secondary's top node. */
  blocks(node: BlockNode): boolean {
    return this.secondary?.blocksTop(node) ?? false;
  }

  /** Also waits for the writes still on their way to the secondary. */
  override async drain(): Promise<void> {
    await super.drain();
    await this.window?.settled();
  }

  // ----------------------------------------------------------------- I/O

  protected doRead(offset: number, buf: Buffer): Promise<void> {
    // The primary node only forwards writes; quorum's fifo reads never reach it.
    if (this.mode === 'primary') return Promise.reject(this.refused('read'));
    switch (this.stageValue) {
      case 'none': return Promise.reject(this.refused('read'));
      case 'running': return this.secondary!.readRunning(offset, buf);
      default: return this.file!.read(offset, buf);
    }
  }

  protected doWrite(offset: number, buf: Buffer, flags: number): Promise<void> {
    const write = this.dispatchWrite(offset, buf, (flags & Req.STABLE_BUFFER) !== 0);
    return flags & Req.FUA ? write.then(() => this.doFlush()) : write;
  }

  protected override async doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    if (flags & Req.NO_FALLBACK) throw new BlockError('ENOTSUP', 'replication cannot write zeroes without writing data');
    for (let done = 0; done < length;) {
      const n = Math.min(ZEROES.length, length - done);
      await this.dispatchWrite(offset + done, n === ZEROES.length ? ZEROES : ZEROES.subarray(0, n), true);
      done += n;
    }
    if (flags & Req.FUA) await this.doFlush();
  }

  // Discard keeps the base class's silent success: QEMU's driver has no discard.

  protected async doFlush(): Promise<void> {
    if (this.secondary) return this.secondary.flushChildren();
    const file = this.file!;
    // NBD's flush covers the writes answered before it was sent.
    await this.window!.settled();
    return file.flush().catch((err: unknown) => {
      // QEMU returns flush errors (quorum outvotes them); colo-blk also latches them.
      if (this.stageValue === 'running') this.latch(file.nodeName, 'nbd', 'flush', err, true);
      throw err;
    });
  }

  protected override async doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    const servesReads = this.mode === 'secondary' && this.stageValue !== 'none';
    if (!servesReads) return { length, flags: Status.DATA | Status.ALLOCATED, offset: -1 };
    const st = await blockStatusAbove(this.file!, null, offset, length);
    return { length: st.length, flags: (st.flags & (Status.DATA | Status.ZERO)) | Status.ALLOCATED, offset: -1 };
  }

  protected override async doClose(): Promise<void> {
    try {
      await this.secondary?.shutdown();
    } finally {
      this.registry.unregister(this);
    }
  }

  private dispatchWrite(offset: number, buf: Buffer, stable = false): Promise<void> {
    if (!this.secondary) {
      if (this.stageValue !== 'running') return Promise.reject(this.refused('write'));
      const file = this.file!;
      // The window may keep a stable buffer as it is; a small one is cheaper
      // to copy than to keep the writer waiting until it is on the wire.
      const owned = (stable || buf.length <= COPY_MAX) && this.window!.limits.maxBytes > 0;
      const payload = owned && !stable ? Buffer.from(buf) : buf;
      return this.window!.submit(offset, buf.length, (released) =>
        file.write(offset, payload, 0, released).catch((err: unknown) => {
          // Writes still on their way when a failover gave the secondary up fail unreported, as QEMU's error is reset then.
          if (this.stageValue === 'running') this.latch(file.nodeName, 'nbd', 'write', err, false);
        }), owned);
    }
    switch (this.stageValue) {
      case 'none': return Promise.reject(this.refused('write'));
      case 'running': return this.secondary.writeRunning(offset, buf);
      case 'failover-failed': return this.secondary.writeRouted(offset, buf);
      default: return this.file!.write(offset, buf);
    }
  }

  // ------------------------------------------------------------ internals

  private refused(op: 'read' | 'write'): BlockError {
    return new BlockError('EIO', `replication node ${this.nodeName} (${this.mode}, ${this.stageValue}) refuses ${op}s`);
  }

  private setStage(to: Stage): void {
    const from = this.stageValue;
    if (from === to) return;
    this.stageValue = to;
    this.log.info('replication-stage', { from, to });
    this.registry.events.emit('stage', { node: this.nodeName, mode: this.mode, from, to });
  }

  private latch(disk: string, role: DiskRole, operation: FailedOperation, err: unknown, guestVisible: boolean): void {
    const cause = BlockError.from(err, `${operation} on ${disk}`);
    const known = this.latched.find((e) => e.disk === disk);
    if (known) {
      known.count++;
      return;
    }
    const error: LatchedError = {
      disk,
      role,
      operation,
      errno: cause.code,
      errnoNumber: cause.errno,
      message: cause.message,
      since: new Date().toISOString(),
      count: 1,
      guestVisible,
    };
    this.latched.push(error);
    this.log.warn('replication-error-latched', { disk, role, operation, errno: cause.code, message: cause.message });
    this.registry.events.emit('error-latched', { node: this.nodeName, mode: this.mode, error: { ...error } });
  }

  private host(): ReplicationHost {
    return {
      node: this,
      graph: this.graph,
      topId: this.topId ?? '',
      log: this.log,
      stage: () => this.stageValue,
      setStage: (to) => this.setStage(to),
      latch: (disk, role, operation, err, guestVisible) => this.latch(disk, role, operation, err, guestVisible),
      clearErrors: () => { this.latched = []; },
      emitCheckpoint: (durationUs) => this.registry.events.emit('checkpoint', { node: this.nodeName, durationUs }),
    };
  }

  /** Control operations on one node never interleave. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.control.then(fn, fn);
    this.control = run.catch(() => undefined);
    return run;
  }
}
