/**
 * The block graph: every open node by name, opened from blockdev option
 * dictionaries through a registry of drivers, and closed bottom-up.
 */
import { BlockError } from './errors.js';
import { BlockNode, type ChildOwner } from './node.js';
import { OptionReader, isDict, type OptionDict, type OptionValue } from './options.js';

export interface OpenContext {
  readonly graph: BlockGraph;
  readonly nodeName: string | undefined;
  readonly readOnly: boolean;
  /** Driver-specific options; generic ones (driver, node-name, cache...) are already taken. */
  readonly options: OptionReader;
  /**
   * Opens the child given by option `key`: a nested dictionary is opened as an
   * anonymous node, a string names an existing node. Returns undefined when
   * the option is absent and null when it is explicitly null.
   */
  openChild(key: string, opts?: { readOnly?: boolean }): Promise<BlockNode | null | undefined>;
  /**
   * Opens a child from a value the driver took itself (an element of a list
   * such as quorum's `children`): a dictionary or a node name. `key` names it
   * in error messages.
   */
  openChildValue(value: OptionValue, key: string, opts?: { readOnly?: boolean }): Promise<BlockNode>;
  /** Opens an image by file name (a backing file named in an image header). */
  openImage(filename: string, format: string | undefined, readOnly: boolean): Promise<BlockNode>;
}

export interface DriverDefinition {
  readonly name: string;
  /** How QEMU words errors about this driver: a protocol or a format. */
  readonly kind: 'protocol' | 'format';
  open(ctx: OpenContext): Promise<BlockNode>;
}

const NODE_NAME = /^[A-Za-z][A-Za-z0-9_.-]{0,30}$/;

/** Options every driver accepts; the graph consumes them. */
const GENERIC_KEYS = ['driver', 'node-name', 'read-only', 'auto-read-only', 'cache', 'discard', 'detect-zeroes', 'force-share'];

export class BlockGraph {
  private readonly drivers = new Map<string, DriverDefinition>();
  private readonly nodes = new Set<BlockNode>();
  private readonly byName = new Map<string, BlockNode>();
  /** Nodes opened as anonymous children: closed with their last parent. */
  private readonly owned = new WeakSet<BlockNode>();
  /** Nodes added by the user (blockdev-add, --blockdev): only those can be deleted by name. */
  private readonly monitorOwned = new Set<BlockNode>();

  constructor(drivers: Iterable<DriverDefinition> = []) {
    for (const d of drivers) this.register(d);
  }

  register(driver: DriverDefinition): void {
    this.drivers.set(driver.name, driver);
  }

  hasDriver(name: string): boolean {
    return this.drivers.has(name);
  }

  driverNames(): string[] {
    return [...this.drivers.keys()].sort();
  }

  /** A named node, or undefined. */
  lookup(name: string): BlockNode | undefined {
    return this.byName.get(name);
  }

  /** Like `lookup` but throws QEMU's message. */
  get(name: string): BlockNode {
    const node = this.byName.get(name);
    if (!node) throw new BlockError('ENOENT', `Cannot find device='${name}' nor node-name='${name}'`);
    return node;
  }

  /** Every open node, named or not, in creation order. */
  allNodes(): BlockNode[] {
    return [...this.nodes];
  }

  namedNodes(): BlockNode[] {
    return [...this.byName.values()];
  }

  isMonitorOwned(node: BlockNode): boolean {
    return this.monitorOwned.has(node);
  }

  /** blockdev-add: opens a node tree and keeps its root until `delete`. */
  async add(options: OptionDict): Promise<BlockNode> {
    if (typeof options['node-name'] !== 'string') {
      throw new BlockError('EINVAL', 'node-name is required at the top level of blockdev-add');
    }
    const node = await this.open(options);
    this.monitorOwned.add(node);
    return node;
  }

  /**
   * Opens a node tree from a blockdev dictionary. Any node this call created
   * is closed again if it fails part-way.
   */
  async open(options: OptionDict, inherited: { readOnly?: boolean } = {}): Promise<BlockNode> {
    const created: BlockNode[] = [];
    try {
      return await this.openInner(options, inherited.readOnly ?? false, created);
    } catch (err) {
      for (const n of created.reverse()) await this.forget(n);
      throw err;
    }
  }

  /** blockdev-del: closes a user-added node that nothing uses any more. */
  async delete(name: string): Promise<void> {
    const node = this.byName.get(name);
    if (!node) throw new BlockError('ENOENT', `Failed to find node with node-name='${name}'`);
    if (!this.monitorOwned.has(node)) throw new BlockError('EINVAL', `Node ${name} is not owned by the monitor`);
    if (node.parents.size > 0) throw new BlockError('EBUSY', `Block device ${name} is in use`);
    this.monitorOwned.delete(node);
    await this.closeTree(node);
  }

  /**
   * Points every parent of `from` at `to` (QEMU's bdrv_replace_node), except
   * parents in `except`. Used when an active commit completes.
   */
  replaceNode(from: BlockNode, to: BlockNode, except: ReadonlySet<ChildOwner> = new Set()): void {
    for (const ref of [...from.parents]) {
      if (except.has(ref.parent)) continue;
      ref.node = to;
    }
  }

  /**
   * Closes a node and every child that only it kept alive. Nodes still
   * referenced elsewhere, or added by the user, stay open.
   */
  async closeTree(node: BlockNode): Promise<void> {
    const children = [...node.children.values()].map((ref) => ref.node);
    for (const ref of [...node.children.values()]) ref.detach();
    await this.forget(node);
    for (const child of children) {
      if (child.parents.size === 0 && this.owned.has(child) && !this.monitorOwned.has(child)) {
        await this.closeTree(child);
      }
    }
  }

  /** Flushes and closes every node, parents before children. */
  async closeAll(): Promise<void> {
    const errors: unknown[] = [];
    const flushErrors = await Promise.allSettled([...this.nodes].map((n) => n.isClosed ? Promise.resolve() : n.flush()));
    for (const r of flushErrors) if (r.status === 'rejected') errors.push(r.reason);
    while (this.nodes.size > 0) {
      const roots = [...this.nodes].filter((n) => n.nodeParents.every((p) => !this.nodes.has(p)));
      const batch = roots.length > 0 ? roots : [...this.nodes];
      for (const n of batch) {
        try {
          await n.close();
        } catch (err) {
          errors.push(err);
        }
        this.nodes.delete(n);
        if (this.byName.get(n.nodeName) === n) this.byName.delete(n.nodeName);
        this.monitorOwned.delete(n);
      }
    }
    if (errors.length > 0) throw errors[0];
  }

  // ------------------------------------------------------------------ open

  private async openInner(options: OptionDict, parentReadOnly: boolean, created: BlockNode[]): Promise<BlockNode> {
    const driverName = options.driver;
    if (driverName === undefined) throw new BlockError('EINVAL', "Parameter 'driver' is missing");
    if (typeof driverName !== 'string') throw new BlockError('EINVAL', "Invalid parameter type for 'driver', expected: string");
    const driver = this.drivers.get(driverName);
    if (!driver) throw new BlockError('EINVAL', `Parameter 'driver' does not accept value '${driverName}'`);

    const nodeName = options['node-name'];
    if (nodeName !== undefined) {
      if (typeof nodeName !== 'string' || !NODE_NAME.test(nodeName)) {
        throw new BlockError('EINVAL', `Invalid node-name: '${String(nodeName)}'`);
      }
      if (this.byName.has(nodeName)) throw new BlockError('EEXIST', `Duplicate nodes with node-name='${nodeName}'`);
    }
    const generic = new OptionReader(options);
    for (const k of GENERIC_KEYS) generic.take(k);
    const readOnly = generic.optBool('read-only') ?? parentReadOnly;
    this.checkCache(options.cache);

    const driverOptions: OptionDict = {};
    for (const k of Object.keys(options)) if (!GENERIC_KEYS.includes(k)) driverOptions[k] = options[k]!;
    const reader = new OptionReader(driverOptions);

    const ctx: OpenContext = {
      graph: this,
      nodeName,
      readOnly,
      options: reader,
      openChild: async (key, o) => {
        const v = reader.take(key);
        if (v === undefined) return undefined;
        if (v === null) return null;
        return this.resolveChild(v, key, o?.readOnly ?? readOnly, created);
      },
      openChildValue: (v, key, o) => this.resolveChild(v, key, o?.readOnly ?? readOnly, created),
      openImage: async (filename, format, ro) => {
        const child = await this.openInner(
          { driver: format ?? 'raw', file: { driver: 'file', filename }, 'read-only': ro },
          ro,
          created,
        );
        // Like a nested dict: closed with its last parent (blockdev-del of an overlay).
        this.owned.add(child);
        return child;
      },
    };

    const node = await driver.open(ctx);
    // Register first so that a failure below still closes the node.
    this.nodes.add(node);
    created.push(node);
    const leftover = reader.leftovers();
    if (leftover.length > 0) {
      const what = driver.kind === 'protocol'
        ? `Block protocol '${driverName}' doesn't support the option '${leftover[0]}'`
        : `Block format '${driverName}' does not support the option '${leftover[0]}'`;
      throw new BlockError('EINVAL', what);
    }
    if (nodeName !== undefined) this.byName.set(nodeName, node);
    return node;
  }

  private async resolveChild(v: OptionValue, key: string, readOnly: boolean, created: BlockNode[]): Promise<BlockNode> {
    if (typeof v === 'string') {
      const node = this.byName.get(v);
      if (!node) throw new BlockError('ENOENT', `Cannot find device='${v}' nor node-name='${v}'`);
      return node;
    }
    if (!isDict(v)) throw new BlockError('EINVAL', `Invalid parameter type for '${key}', expected: object or string`);
    const child = await this.openInner(v, readOnly, created);
    this.owned.add(child);
    return child;
  }

  private checkCache(cache: OptionValue | undefined): void {
    if (cache === undefined) return;
    if (!isDict(cache)) throw new BlockError('EINVAL', "Invalid parameter type for 'cache', expected: object");
    for (const k of Object.keys(cache)) {
      if (k !== 'direct' && k !== 'no-flush') throw new BlockError('EINVAL', `Parameter 'cache.${k}' is unexpected`);
    }
  }

  private async forget(node: BlockNode): Promise<void> {
    for (const ref of [...node.children.values()]) ref.detach();
    try {
      await node.close();
    } finally {
      this.nodes.delete(node);
      if (this.byName.get(node.nodeName) === node) this.byName.delete(node.nodeName);
      this.monitorOwned.delete(node);
    }
  }
}
