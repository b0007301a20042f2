/**
 * The commands a QMP server knows: name, argument schema, handler and
 * flags. `command()` binds a typed handler to its schema and erases the
 * type, so the registry can hold commands of every shape.
 */
import type { Logger } from '../util/log.js';
import type { QmpObject } from './json-value.js';
import { emptyStruct, type ArgsSpec, type Infer, type Spec } from './schema.js';
import { validate } from './validate.js';

export type CommandFeature = 'deprecated' | 'unstable';

/** The part of a client session a handler may touch. */
export interface SessionControl {
  readonly id: number;
  readonly negotiated: boolean;
  /** Leaves capabilities negotiation mode (what `qmp_capabilities` does). */
  enterCommandMode(): void;
}

export interface CommandContext {
  readonly session: SessionControl;
  readonly log: Logger;
  /** Runs after the response has been queued to the client (`quit` uses it). */
  afterResponse(fn: () => void): void;
}

export interface CommandDefinition<A extends ArgsSpec> {
  name: string;
  args?: A;
  /** The return type, for query-qmp-schema; absent means `{}`. */
  returns?: Spec;
  /** Only `qmp_capabilities` may run before negotiation. */
  allowBeforeNegotiation?: boolean;
  features?: readonly CommandFeature[];
  /** The result is sent as `return`; undefined becomes `{}`. */
  handler(args: NoInfer<Infer<A>>, ctx: CommandContext): unknown;
}

export interface Command {
  readonly name: string;
  readonly args: ArgsSpec;
  readonly returns: Spec | undefined;
  readonly allowBeforeNegotiation: boolean;
  readonly features: readonly CommandFeature[];
  /** Validates the raw arguments (throwing QmpError) and runs the handler. */
  run(args: QmpObject, ctx: CommandContext): Promise<unknown>;
}

export function command<A extends ArgsSpec = typeof emptyStruct>(def: CommandDefinition<A>): Command {
  const args: ArgsSpec = def.args ?? emptyStruct;
  // The schema guarantees the shape; the cast only erases the generic.
  const handler = def.handler as (args: unknown, ctx: CommandContext) => unknown;
  return {
    name: def.name,
    args,
    returns: def.returns,
    allowBeforeNegotiation: def.allowBeforeNegotiation ?? false,
    features: def.features ?? [],
    async run(raw, ctx) {
      return handler(validate(args, raw), ctx);
    },
  };
}

export class CommandRegistry {
  private readonly commands = new Map<string, Command>();

  add(...commands: Command[]): this {
    for (const c of commands) {
      if (this.commands.has(c.name)) throw new Error(`QMP command ${c.name} is registered twice`);
      this.commands.set(c.name, c);
    }
    return this;
  }

  get(name: string): Command | undefined {
    return this.commands.get(name);
  }

  has(name: string): boolean {
    return this.commands.has(name);
  }

  /** In registration order. */
  list(): Command[] {
    return [...this.commands.values()];
  }
}
