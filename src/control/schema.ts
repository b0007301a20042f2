/**
 * Argument and return types of QMP commands, modelled on QAPI: builtins,
 * enums, structs with optional members (`'*name'`, as in QAPI's schema
 * files), lists, alternates and flat unions. A spec both validates what a
 * client sent (validate.ts) and describes the command in
 * `query-qmp-schema` (introspect.ts); `Infer<S>` gives handlers the
 * TypeScript type of validated arguments.
 */
import type { QmpValue } from './json-value.js';
import type { Visit } from './validate.js';

export type IntWidth = 'int' | 'int8' | 'int16' | 'int32' | 'int64' | 'uint8' | 'uint16' | 'uint32' | 'uint64' | 'size';

export interface StrSpec { readonly kind: 'str' }
export interface BoolSpec { readonly kind: 'bool' }
export interface NumberSpec { readonly kind: 'number' }
export interface AnySpec { readonly kind: 'any' }
export interface NullSpec { readonly kind: 'null' }
export interface IntSpec { readonly kind: 'int'; readonly width: IntWidth }
export interface EnumSpec<V extends string = string> {
  readonly kind: 'enum';
  readonly name: string;
  readonly values: readonly V[];
}
export interface ListSpec<E extends Spec = Spec> { readonly kind: 'list'; readonly of: E }
export interface StructSpec<M extends Members = Members> {
  readonly kind: 'struct';
  readonly name: string;
  readonly members: M;
}
export interface AlternateSpec<B extends readonly Spec[] = readonly Spec[]> {
  readonly kind: 'alternate';
  readonly name: string;
  readonly branches: B;
}
/** A flat union: base members, one of which (`tag`, an enum) selects extra members. */
export interface UnionSpec<
  B extends Members = Members,
  T extends string = string,
  V extends Readonly<Record<string, Members>> = Readonly<Record<string, Members>>,
> {
  readonly kind: 'union';
  readonly name: string;
  readonly base: B;
  readonly tag: T;
  readonly variants: V;
}
/** Escape hatch for shapes QAPI cannot express; introspected as `introspectAs`. */
export interface CustomSpec<T = unknown> {
  readonly kind: 'custom';
  readonly name: string;
  readonly introspectAs: Spec;
  validate(value: QmpValue, at: Visit): T;
}

export type Spec =
  | StrSpec | BoolSpec | NumberSpec | AnySpec | NullSpec | IntSpec
  | EnumSpec | ListSpec | StructSpec | AlternateSpec | UnionSpec | CustomSpec;

/** Member name → type; a leading `*` marks an optional member. */
export type Members = { readonly [key: string]: Spec };

export type ArgsSpec = StructSpec | UnionSpec | CustomSpec<Record<string, unknown>>;

// -------------------------------------------------------------- builders

export const str: StrSpec = { kind: 'str' };
export const bool: BoolSpec = { kind: 'bool' };
export const number: NumberSpec = { kind: 'number' };
export const any: AnySpec = { kind: 'any' };
export const nullType: NullSpec = { kind: 'null' };
export const int: IntSpec = { kind: 'int', width: 'int' };
export const uint32: IntSpec = { kind: 'int', width: 'uint32' };
export const uint64: IntSpec = { kind: 'int', width: 'uint64' };

export function intOf(width: IntWidth): IntSpec {
  return { kind: 'int', width };
}

export function enumOf<const V extends readonly string[]>(name: string, values: V): EnumSpec<V[number]> {
  return { kind: 'enum', name, values };
}

export function struct<const M extends Members>(name: string, members: M): StructSpec<M> {
  return { kind: 'struct', name, members };
}

export function listOf<E extends Spec>(of: E): ListSpec<E> {
  return { kind: 'list', of };
}

export function alternate<const B extends readonly Spec[]>(name: string, branches: B): AlternateSpec<B> {
  return { kind: 'alternate', name, branches };
}

export function union<
  const B extends Members,
  const T extends string & keyof B,
  const V extends Readonly<Record<string, Members>>,
>(name: string, base: B, tag: T, variants: V): UnionSpec<B, T, V> {
  return { kind: 'union', name, base, tag, variants };
}

export function custom<T>(name: string, introspectAs: Spec, validate: (value: QmpValue, at: Visit) => T): CustomSpec<T> {
  return { kind: 'custom', name, introspectAs, validate };
}

export const emptyStruct = struct('Empty', {});

/** Member names without the optional marker, and whether each is optional. */
export function memberEntries(members: Members): Array<{ name: string; optional: boolean; spec: Spec }> {
  return Object.keys(members).map((key) => ({
    name: key.startsWith('*') ? key.slice(1) : key,
    optional: key.startsWith('*'),
    spec: members[key]!,
  }));
}

// ------------------------------------------------------------ inference

type Simplify<T> = { [K in keyof T]: T[K] } & {};

type RequiredKeys<M> = { [K in keyof M]: K extends `*${string}` ? never : K }[keyof M];
type OptionalKeys<M> = { [K in keyof M]: K extends `*${infer N}` ? N : never }[keyof M];

export type InferMembers<M extends Members> = Simplify<
  { [K in RequiredKeys<M> & string]: Infer<M[K]> } &
  { [K in OptionalKeys<M>]?: Infer<M[`*${K}`]> }
>;

type InferUnion<B extends Members, T extends string, V extends Readonly<Record<string, Members>>> = {
  [Case in keyof V & string]: Simplify<
    InferMembers<Omit<B, T>> & { [K in T]: Case } & InferMembers<V[Case]>
  >;
}[keyof V & string];

export type Infer<S> =
  S extends StrSpec ? string :
  S extends BoolSpec ? boolean :
  S extends NumberSpec ? number :
  S extends AnySpec ? QmpValue :
  S extends NullSpec ? null :
  S extends IntSpec ? number :
  S extends EnumSpec<infer V> ? V :
  S extends ListSpec<infer E> ? Array<Infer<E>> :
  S extends StructSpec<infer M> ? InferMembers<M> :
  S extends AlternateSpec<infer B> ? Infer<B[number]> :
  S extends UnionSpec<infer B, infer T, infer V> ? InferUnion<B, T, V> :
  S extends CustomSpec<infer T> ? T :
  never;
