/**
 * `fault`: a filter that fails, delays or parks chosen requests, switchable at
 * run time (QEMU's blkdebug, for tests). A rule matches operations that
 * overlap a byte range; it can fail them with an errno, delay them, or hold
 * them until the test releases them, for its first N matches or forever.
 * Without rules the node costs one array-length test per request.
 *
 * Options at open: `file` (the filtered node) and `rules`, a list of
 * `{op, offset?, length?, errno?, count?, delay-ms?}`; `op` is one operation
 * name or a list of them.
 */
import { BlockError, type Errno } from '../block/errors.js';
import type { DriverDefinition, OpenContext } from '../block/graph.js';
import { BlockNode, type BlockStatus } from '../block/node.js';
import { isDict, type OptionValue } from '../block/options.js';

export type FaultOp = 'read' | 'write' | 'write-zeroes' | 'discard' | 'flush' | 'block-status' | 'make-empty';

const OPS: readonly FaultOp[] = ['read', 'write', 'write-zeroes', 'discard', 'flush', 'block-status', 'make-empty'];

export interface FaultRuleSpec {
  op: FaultOp | readonly FaultOp[];
  /** Requests must overlap [offset, offset+length); the whole disk when absent. */
  offset?: number;
  length?: number;
  /** Fail matching requests with this error (after any delay or hold). */
  errno?: Errno;
  /** Park matching requests until `release` or `remove`. */
  hold?: boolean;
  /** Delay matching requests, in ms, or a random value within [min, max]. */
  delayMs?: number | readonly [number, number];
  /** Only the first `count` matches are affected; unlimited when absent. */
  count?: number;
}

export class FaultRule {
  /** Requests this rule has affected so far. */
  hits = 0;
  private readonly ops: ReadonlySet<FaultOp>;
  private parked: Array<() => void> = [];
  private hitWaiters: Array<{ n: number; resolve: () => void }> = [];
  private removed = false;

  constructor(private readonly owner: FaultNode, readonly spec: FaultRuleSpec) {
    this.ops = new Set(typeof spec.op === 'string' ? [spec.op] : spec.op);
    for (const op of this.ops) if (!OPS.includes(op)) throw new BlockError('EINVAL', `unknown fault operation '${op}'`);
  }

  /** Requests parked right now. */
  get parkedCount(): number {
    return this.parked.length;
  }

  get exhausted(): boolean {
    return this.removed || (this.spec.count !== undefined && this.hits >= this.spec.count);
  }

  /** Lets every parked request continue (later matches still park while the rule lasts). */
  release(): void {
    const parked = this.parked;
    this.parked = [];
    for (const go of parked) go();
  }

  /** Stops matching and releases anything parked. */
  remove(): void {
    this.removed = true;
    this.owner.dropRule(this);
    this.release();
  }

  /** Resolves once the rule has affected `n` requests (counting from its creation). */
  waitForHits(n = 1): Promise<void> {
    if (this.hits >= n) return Promise.resolve();
    return new Promise((resolve) => this.hitWaiters.push({ n, resolve }));
  }

  /** @internal */
  matches(op: FaultOp, offset: number, length: number): boolean {
    if (this.exhausted || !this.ops.has(op)) return false;
    const start = this.spec.offset;
    if (start === undefined) return true;
    const end = this.spec.length === undefined ? Infinity : start + this.spec.length;
    if (op === 'flush' || op === 'make-empty') return true;
    return offset < end && start < offset + Math.max(length, 1);
  }

  /** @internal Counts a match at once, so that `count` holds among concurrent requests. */
  claim(): void {
    this.hits++;
    const due = this.hitWaiters.filter((x) => this.hits >= x.n);
    this.hitWaiters = this.hitWaiters.filter((x) => this.hits < x.n);
    for (const w of due) w.resolve();
  }

  /** @internal The rule's effect on one claimed request. */
  async apply(op: FaultOp, offset: number, length: number): Promise<void> {
    const delay = this.spec.delayMs;
    if (delay !== undefined) {
      const ms = typeof delay === 'number' ? delay : delay[0] + Math.random() * (delay[1] - delay[0]);
      if (ms > 0) await new Promise<void>((resolve) => setTimeout(resolve, ms));
    }
    if (this.spec.hold && !this.removed) await new Promise<void>((resolve) => this.parked.push(resolve));
    if (this.spec.errno) {
      throw new BlockError(this.spec.errno, `fault injected by ${this.owner.nodeName}: ${op} [${offset}, ${offset + length})`);
    }
  }
}

export class FaultNode extends BlockNode {
  readonly driver = 'fault';
  override readonly isFilter = true;
  private active: FaultRule[] = [];

  constructor(nodeName: string | undefined, readOnly: boolean, file: BlockNode) {
    super(nodeName, readOnly);
    this.setChild('file', file);
  }

  override get size(): number {
    return this.child.size;
  }

  override get growable(): boolean {
    return this.child.growable;
  }

  get rules(): readonly FaultRule[] {
    return this.active;
  }

  addRule(spec: FaultRuleSpec): FaultRule {
    const rule = new FaultRule(this, spec);
    this.active.push(rule);
    return rule;
  }

  clearRules(): void {
    for (const r of [...this.active]) r.remove();
  }

  /** @internal */
  dropRule(rule: FaultRule): void {
    this.active = this.active.filter((r) => r !== rule);
  }

  private get child(): BlockNode {
    const f = this.file;
    if (!f) throw new BlockError('ENOMEDIUM', `${this.nodeName} has no file child`);
    return f;
  }

  protected doRead(offset: number, buf: Buffer): Promise<void> {
    const gate = this.intercept('read', offset, buf.length);
    return gate ? gate.then(() => this.child.read(offset, buf)) : this.child.read(offset, buf);
  }

  protected doWrite(offset: number, buf: Buffer, flags: number): Promise<void> {
    const gate = this.intercept('write', offset, buf.length);
    return gate ? gate.then(() => this.child.write(offset, buf, flags)) : this.child.write(offset, buf, flags);
  }

  protected override doWriteZeroes(offset: number, length: number, flags: number): Promise<void> {
    const gate = this.intercept('write-zeroes', offset, length);
    const go = (): Promise<void> => this.child.writeZeroes(offset, length, flags);
    return gate ? gate.then(go) : go();
  }

  protected override doDiscard(offset: number, length: number): Promise<void> {
    const gate = this.intercept('discard', offset, length);
    const go = (): Promise<void> => this.child.discard(offset, length);
    return gate ? gate.then(go) : go();
  }

  protected doFlush(): Promise<void> {
    const gate = this.intercept('flush', 0, 0);
    return gate ? gate.then(() => this.child.flush()) : this.child.flush();
  }

  protected override doBlockStatus(offset: number, length: number): Promise<BlockStatus> {
    const gate = this.intercept('block-status', offset, length);
    return gate ? gate.then(() => this.child.blockStatus(offset, length)) : this.child.blockStatus(offset, length);
  }

  protected override async doMakeEmpty(): Promise<void> {
    await this.intercept('make-empty', 0, 0);
    await this.child.makeEmpty();
  }

  /** Null when no rule matches: the request goes down without an extra await. */
  private intercept(op: FaultOp, offset: number, length: number): Promise<void> | null {
    if (this.active.length === 0) return null;
    const hit = this.active.filter((r) => r.matches(op, offset, length));
    if (hit.length === 0) return null;
    for (const rule of hit) rule.claim();
    return (async () => {
      for (const rule of hit) await rule.apply(op, offset, length);
    })();
  }
}

function parseRule(v: OptionValue, index: number): FaultRuleSpec {
  if (!isDict(v)) throw new BlockError('EINVAL', `Invalid parameter type for 'rules.${index}', expected: object`);
  const op = v.op;
  const ops = Array.isArray(op) ? op : [op];
  if (ops.length === 0 || !ops.every((o): o is FaultOp => typeof o === 'string' && (OPS as readonly string[]).includes(o))) {
    throw new BlockError('EINVAL', `Parameter 'rules.${index}.op' expects one of ${OPS.join(', ')}`);
  }
  const spec: FaultRuleSpec = { op: ops };
  const int = (key: string): number | undefined => {
    const x = v[key];
    if (x === undefined) return undefined;
    const n = typeof x === 'string' ? Number(x) : x;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
      throw new BlockError('EINVAL', `Parameter 'rules.${index}.${key}' expects a non-negative integer`);
    }
    return n;
  };
  const offset = int('offset');
  const length = int('length');
  const count = int('count');
  const delay = int('delay-ms');
  if (offset !== undefined) spec.offset = offset;
  if (length !== undefined) spec.length = length;
  if (count !== undefined) spec.count = count;
  if (delay !== undefined) spec.delayMs = delay;
  if (v.errno !== undefined) {
    if (typeof v.errno !== 'string' || !/^E[A-Z]+$/.test(v.errno)) {
      throw new BlockError('EINVAL', `Parameter 'rules.${index}.errno' expects an errno name such as EIO`);
    }
    spec.errno = v.errno as Errno;
  }
  for (const k of Object.keys(v)) {
    if (!['op', 'offset', 'length', 'count', 'delay-ms', 'errno'].includes(k)) {
      throw new BlockError('EINVAL', `Parameter 'rules.${index}.${k}' is unexpected`);
    }
  }
  return spec;
}

export const faultDriver: DriverDefinition = {
  name: 'fault',
  kind: 'format',
  async open(ctx: OpenContext): Promise<BlockNode> {
    const file = await ctx.openChild('file');
    if (!file) throw new BlockError('EINVAL', 'A block device must be specified for "file"');
    const rules = ctx.options.take('rules');
    const specs: FaultRuleSpec[] = [];
    if (rules !== undefined) {
      if (!Array.isArray(rules)) throw new BlockError('EINVAL', "Invalid parameter type for 'rules', expected: array");
      rules.forEach((r, i) => specs.push(parseRule(r, i)));
    }
    const node = new FaultNode(ctx.nodeName, ctx.readOnly, file);
    for (const s of specs) node.addRule(s);
    return node;
  },
};
