/**
 * `query-qmp-schema`: the registered commands and events described the way
 * QEMU's introspection describes them (SchemaInfo), with type names masked
 * as numbers except for builtins, so that clients that probe the schema
 * (libvirt does) can find what colo-blk accepts.
 */
import { EVENT_SPECS } from './events.js';
import type { Command } from './registry.js';
import { emptyStruct, memberEntries, type Members, type Spec } from './schema.js';

type SchemaInfo = Record<string, unknown>;

const BUILTIN_JSON_TYPE: Record<string, string> = {
  str: 'string', int: 'int', number: 'number', bool: 'boolean', null: 'null', any: 'value',
};

class SchemaBuilder {
  private readonly names = new Map<Spec, string>();
  private readonly byKey = new Map<string, string>();
  readonly types: SchemaInfo[] = [];
  private readonly builtins = new Set<string>();

  constructor() {
    this.ref(emptyStruct);
  }

  /** The introspection name of a type, describing it on first use. */
  ref(spec: Spec): string {
    switch (spec.kind) {
      case 'str': case 'int': case 'number': case 'bool': case 'null': case 'any': {
        const name = spec.kind;
        if (!this.builtins.has(name)) {
          this.builtins.add(name);
          this.types.push({ name, 'meta-type': 'builtin', 'json-type': BUILTIN_JSON_TYPE[name] });
        }
        return name;
      }
      case 'custom':
        return this.ref(spec.introspectAs);
      case 'list': {
        const element = this.ref(spec.of);
        const name = `[${element}]`;
        if (!this.byKey.has(name)) {
          this.byKey.set(name, name);
          this.types.push({ name, 'meta-type': 'array', 'element-type': element });
        }
        return name;
      }
      default:
        break;
    }
    const known = this.names.get(spec) ?? this.byKey.get(`${spec.kind}:${spec.name}`);
    if (known) return known;
    const name = String(this.names.size);
    this.names.set(spec, name);
    this.byKey.set(`${spec.kind}:${spec.name}`, name);
    const info: SchemaInfo = { name };
    this.types.push(info);
    switch (spec.kind) {
      case 'enum':
        Object.assign(info, { 'meta-type': 'enum', values: [...spec.values], members: spec.values.map((v) => ({ name: v })) });
        break;
      case 'struct':
        Object.assign(info, { 'meta-type': 'object', members: this.members(spec.members) });
        break;
      case 'alternate':
        Object.assign(info, { 'meta-type': 'alternate', members: spec.branches.map((b) => ({ type: this.ref(b) })) });
        break;
      case 'union': {
        const variants = Object.keys(spec.variants).map((tag) => ({
          case: tag,
          type: this.ref({ kind: 'struct', name: `${spec.name}-${tag}`, members: spec.variants[tag]! }),
        }));
        Object.assign(info, { 'meta-type': 'object', members: this.members(spec.base), tag: spec.tag, variants });
        break;
      }
    }
    return name;
  }

  private members(members: Members): SchemaInfo[] {
    return memberEntries(members).map((m) => {
      const out: SchemaInfo = { name: m.name, type: this.ref(m.spec) };
      if (m.optional) out.default = null;
      return out;
    });
  }
}

export function introspect(commands: readonly Command[]): SchemaInfo[] {
  const b = new SchemaBuilder();
  const entries: SchemaInfo[] = [];
  for (const c of commands) {
    const info: SchemaInfo = {
      name: c.name,
      'meta-type': 'command',
      'arg-type': b.ref(c.args),
      'ret-type': b.ref(c.returns ?? emptyStruct),
    };
    if (c.features.length > 0) info.features = [...c.features];
    entries.push(info);
  }
  for (const [name, spec] of Object.entries(EVENT_SPECS)) {
    entries.push({ name, 'meta-type': 'event', 'arg-type': b.ref(spec) });
  }
  return [...entries, ...b.types];
}
