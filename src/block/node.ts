/**
 * The node interface every block driver implements.
 *
 * A node serves byte ranges of a virtual disk. Nodes stack: a format over a
 * protocol (`file`), an overlay over its `backing` image, a filter over the
 * node it filters. The public methods here validate each request once (range,
 * read-only, closed) and account for requests in flight, so drivers implement
 * only the `do*` methods and never re-check their contract.
 */
import { BlockError } from './errors.js';

/** Request flags, a bitmask so that the hot path allocates no option objects. */
export const Req = {
  /** The write is durable before it completes (NBD FUA). */
  FUA: 1,
  /** write-zeroes may deallocate instead of writing zeroes. */
  MAY_UNMAP: 2,
  /** write-zeroes must fail with ENOTSUP rather than write zero bytes (NBD FAST_ZERO). */
  NO_FALLBACK: 4,
  /**
   * The caller never changes or reuses the write's buffer (an NBD server's
   * request payload): a node may keep it after the write completed instead
   * of copying it.
   */
  STABLE_BUFFER: 8,
} as const;

/** Block-status flags of one layer (QEMU's BDRV_BLOCK_*). */
export const Status = {
  /** The range is stored as data in this layer. */
  DATA: 1,
  /** The range reads as zeroes. */
  ZERO: 2,
  /** This layer decides the content: a read does not fall through to `backing`. */
  ALLOCATED: 4,
  /** `offset` is where the data lives inside the `file` child. */
  OFFSET_VALID: 8,
} as const;

export interface BlockStatus {
  /** Bytes from the queried offset that share this status; always > 0. */
  length: number;
  flags: number;
  /** Host offset in the `file` child when OFFSET_VALID is set, else -1. */
  offset: number;
}

/** Roles a child can have. Replication adds `hidden`/`secondary`, quorum `children.N`. */
export type ChildRole = string;

/** Something that holds a node: another node, or a BlockBackend (an export, a device). */
export type ChildOwner = BlockNode | BlockBackendLike;

/** The part of a BlockBackend the edge needs; the class lives in backend.ts. */
export interface BlockBackendLike {
  readonly kind: 'backend';
  readonly name: string;
  /** Called when the edge is detached from its node. */
  onDetach(ref: ChildRef): void;
}

/**
 * An edge of the graph. Parents hold children through these so that a node
 * can be swapped under all its parents at once (QEMU's bdrv_replace_node:
 * inserting a copy-before-write filter, finishing an active commit).
 */
export class ChildRef {
  private current: BlockNode;

  constructor(readonly parent: ChildOwner, readonly role: ChildRole, node: BlockNode) {
    this.current = node;
    node.parents.add(this);
  }

  get node(): BlockNode {
    return this.current;
  }

  set node(next: BlockNode) {
    if (next === this.current) return;
    this.current.parents.delete(this);
    this.current = next;
    next.parents.add(this);
  }

  /** True when the parent is another node (not a BlockBackend). */
  get fromNode(): boolean {
    return this.parent instanceof BlockNode;
  }

  detach(): void {
    this.current.parents.delete(this);
    if (this.parent instanceof BlockNode) {
      if (this.parent.children.get(this.role) === this) this.parent.children.delete(this.role);
    } else {
      this.parent.onDetach(this);
    }
  }
}

export interface NodeInfo {
  'node-name': string;
  drv: string;
  ro: boolean;
  file: string;
  'backing_file'?: string;
  'backing_file_depth': number;
  image: { 'virtual-size': number; filename: string; format: string; 'backing-filename'?: string };
  [key: string]: unknown;
}

let anonymousCounter = 0;

export abstract class BlockNode {
  /** The driver name as it appears in blockdev options (`qcow2`, `file`, ...). */
  abstract readonly driver: string;
  nodeName: string;
  readOnly: boolean;
  /** True for drivers that pass a single child's content through (replication). */
  readonly isFilter: boolean = false;

  readonly children = new Map<ChildRole, ChildRef>();
  /** Every edge pointing at this node, from nodes and from BlockBackends. */
  readonly parents = new Set<ChildRef>();

  private inFlight = 0;
  private drainWaiters: Array<() => void> = [];
  private gate: Promise<void> | null = null;
  private openGate: (() => void) | null = null;
  private quiesceDepth = 0;
  private closed = false;

  protected constructor(nodeName: string | undefined, readOnly: boolean) {
    this.nodeName = nodeName ?? `#block${++anonymousCounter}`;
    this.readOnly = readOnly;
  }

  /** Virtual size in bytes. */
  abstract get size(): number;

  /** What `query-named-block-nodes` shows as `file`: a host path or URI. */
  get filename(): string {
    return this.file?.filename ?? '';
  }

  get file(): BlockNode | null {
    return this.children.get('file')?.node ?? null;
  }

  get backing(): BlockNode | null {
    return this.children.get('backing')?.node ?? null;
  }

  /** For filters: the node whose content this one shows. */
  get filtered(): BlockNode | null {
    return this.isFilter ? this.file : null;
  }

  /**
   * Protocol nodes under a format grow when written past their end (QEMU's
   * BlockDriverState does the same); users of a node check its size themselves.
   */
  get growable(): boolean {
    return false;
  }

  /** Whether the node is named by its user (not an auto-generated `#blockN`). */
  get hasUserName(): boolean {
    return !this.nodeName.startsWith('#');
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Parents that are nodes (not BlockBackends). A root node has none. */
  get nodeParents(): BlockNode[] {
    const out: BlockNode[] = [];
    for (const ref of this.parents) if (ref.parent instanceof BlockNode) out.push(ref.parent);
    return out;
  }

  /** BlockBackends (exports, devices) attached to this node. */
  get backends(): BlockBackendLike[] {
    const out: BlockBackendLike[] = [];
    for (const ref of this.parents) if (!(ref.parent instanceof BlockNode)) out.push(ref.parent);
    return out;
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** Sets, replaces or (with null) removes a child. */
  setChild(role: ChildRole, node: BlockNode | null): void {
    const ref = this.children.get(role);
    if (node === null) {
      ref?.detach();
      return;
    }
    if (ref) ref.node = node;
    else this.children.set(role, new ChildRef(this, role, node));
  }

  // ---------------------------------------------------------------- I/O API

  read(offset: number, buf: Buffer): Promise<void> {
    const bad = this.checkRequest(offset, buf.length, false);
    if (bad) return Promise.reject(bad);
    if (buf.length === 0) return Promise.resolve();
    if (this.gate) return this.gate.then(() => this.read(offset, buf));
    return this.track(this.doRead(offset, buf));
  }

  /**
   * Writes `buf` at `offset`. A driver that is done with `buf` before the
   * write completes (an NBD client once the payload is in the kernel's
   * socket buffer) may call `released` early; otherwise it is not called,
   * and the caller may reuse `buf` only once the promise settles.
   */
  write(offset: number, buf: Buffer, flags = 0, released?: () => void): Promise<void> {
    const bad = this.checkRequest(offset, buf.length, true);
    if (bad) return Promise.reject(bad);
    if (buf.length === 0) return Promise.resolve();
    if (this.gate) return this.gate.then(() => this.write(offset, buf, flags, released));
    let done: Promise<void>;
    try {
      done = this.doWrite(offset, buf, flags, released);
    } catch (err) {
      // Drivers whose doWrite is not async still fail by rejecting, never by throwing at the caller.
      done = Promise.reject(err);
    }
    return this.track(done);
  }

  writeZeroes(offset: number, length: number, flags = 0): Promise<void> {
    const bad = this.checkRequest(offset, length, true);
    if (bad) return Promise.reject(bad);
    if (length === 0) return Promise.resolve();
    if (this.gate) return this.gate.then(() => this.writeZeroes(offset, length, flags));
    return this.track(this.doWriteZeroes(offset, length, flags));
  }

  discard(offset: number, length: number): Promise<void> {
    const bad = this.checkRequest(offset, length, true);
    if (bad) return Promise.reject(bad);
    if (length === 0) return Promise.resolve();
    if (this.gate) return this.gate.then(() => this.discard(offset, length));
    return this.track(this.doDiscard(offset, length));
  }

  flush(): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    if (this.gate) return this.gate.then(() => this.flush());
    return this.track(this.doFlush());
  }

  /** Status of this layer alone, for the extent that starts at `offset`. */
  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    const bad = this.checkRequest(offset, length, false);
    if (bad) return Promise.reject(bad);
    if (length === 0) return Promise.reject(new BlockError('EINVAL', 'block status of an empty range'));
    if (this.gate) return this.gate.then(() => this.blockStatus(offset, length));
    return this.track(this.doBlockStatus(offset, length));
  }

  /** Drops everything this layer holds, so that the backing shows through. */
  makeEmpty(): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    if (this.readOnly) return Promise.reject(this.readOnlyError());
    return this.doMakeEmpty();
  }

  /**
   * Flushes and releases the node. Children are not closed: the graph owns
   * every node and closes them bottom-up after their parents.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.drain();
    this.closed = true;
    await this.doClose();
  }

  // ---------------------------------------------------------- quiescing

  /** Resolves when no request is in flight on this node. */
  drain(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /**
   * Holds new requests at the door until `resume`, then waits for those in
   * flight. Nested calls are counted. Use it for graph changes and for
   * operations that must see no concurrent I/O (emptying an overlay).
   */
  async quiesce(): Promise<void> {
    if (this.quiesceDepth++ === 0) {
      this.gate = new Promise<void>((resolve) => { this.openGate = resolve; });
    }
    await this.drain();
  }

  resume(): void {
    if (this.quiesceDepth === 0) throw new Error(`resume without quiesce on ${this.nodeName}`);
    if (--this.quiesceDepth === 0) {
      const open = this.openGate;
      this.gate = null;
      this.openGate = null;
      open?.();
    }
  }

  // ------------------------------------------------------------- describe

  info(): NodeInfo {
    const backing = this.backing;
    let depth = 0;
    for (let b = backing; b; b = b.backing) depth++;
    const info: NodeInfo = {
      'node-name': this.nodeName,
      drv: this.driver,
      ro: this.readOnly,
      file: this.filename,
      'backing_file_depth': depth,
      image: { 'virtual-size': this.size, filename: this.filename, format: this.driver },
    };
    if (backing) {
      info.backing_file = backing.filename;
      info.image['backing-filename'] = backing.filename;
    }
    return info;
  }

  // ---------------------------------------------------- driver callbacks

  protected abstract doRead(offset: number, buf: Buffer): Promise<void>;
  protected abstract doWrite(offset: number, buf: Buffer, flags: number, released?: () => void): Promise<void>;

  /** Default: write a buffer of zeroes, unless the caller forbids the fallback. */
  protected async doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    if (flags & Req.NO_FALLBACK) {
      throw new BlockError('ENOTSUP', `${this.driver} cannot write zeroes without writing data`);
    }
    const chunk = Math.min(length, 1 << 20);
    const zeroes = Buffer.alloc(chunk);
    for (let done = 0; done < length; done += chunk) {
      const n = Math.min(chunk, length - done);
      await this.doWrite(offset + done, n === chunk ? zeroes : zeroes.subarray(0, n), flags & Req.FUA);
    }
  }

  /** Default: discard is advisory, so doing nothing is correct. */
  protected async doDiscard(_offset: number, _length: number): Promise<void> {}

  protected abstract doFlush(): Promise<void>;

  /** Default for nodes without allocation metadata: everything is data. */
  protected async doBlockStatus(_offset: number, length: number): Promise<BlockStatus> {
    return { length, flags: Status.DATA | Status.ALLOCATED, offset: -1 };
  }

  protected async doMakeEmpty(): Promise<void> {
    throw new BlockError('ENOTSUP', `${this.driver} does not support emptying nodes`);
  }

  protected async doClose(): Promise<void> {}

  // --------------------------------------------------------------- helpers

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight++;
    // then() with two pre-bound handlers instead of finally(): finally costs an extra promise and microtask per layer.
    return p.then(this.doneWith, this.doneWithError) as Promise<T>;
  }

  private readonly doneWith = <T>(value: T): T => {
    this.requestDone();
    return value;
  };

  private readonly doneWithError = (err: unknown): never => {
    this.requestDone();
    throw err;
  };

  private readonly requestDone = (): void => {
    if (--this.inFlight === 0 && this.drainWaiters.length > 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  };

  private checkRequest(offset: number, length: number, writing: boolean): BlockError | null {
    if (this.closed) return this.closedError();
    if (writing && this.readOnly) return this.readOnlyError();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      return new BlockError('EINVAL', `invalid request offset ${offset} length ${length}`);
    }
    if (offset + length > this.size && !this.growable) {
      return new BlockError(
        'EIO',
        `request [${offset}, ${offset + length}) is beyond the end of ${this.nodeName} (${this.size} bytes)`,
      );
    }
    return null;
  }

  private closedError(): BlockError {
    return new BlockError('ENOMEDIUM', `node ${this.nodeName} is closed`);
  }

  private readOnlyError(): BlockError {
    return new BlockError('EROFS', `node ${this.nodeName} is read-only`);
  }
}
