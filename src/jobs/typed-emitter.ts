/**
 * A thin typed facade over Node's EventEmitter: each event name has exactly
 * one payload type, so listeners and emitters cannot disagree about shapes.
 */
import { EventEmitter } from 'node:events';

export class TypedEmitter<Events extends object> {
  private readonly inner = new EventEmitter();

  constructor() {
    // Many observers (QMP monitors, tests) may watch one graph.
    this.inner.setMaxListeners(0);
  }

  on<K extends keyof Events & string>(event: K, listener: (payload: Events[K]) => void): this {
    this.inner.on(event, listener as (payload: unknown) => void);
    return this;
  }

  once<K extends keyof Events & string>(event: K, listener: (payload: Events[K]) => void): this {
    this.inner.once(event, listener as (payload: unknown) => void);
    return this;
  }

  off<K extends keyof Events & string>(event: K, listener: (payload: Events[K]) => void): this {
    this.inner.off(event, listener as (payload: unknown) => void);
    return this;
  }

  emit<K extends keyof Events & string>(event: K, payload: Events[K]): boolean {
    return this.inner.emit(event, payload);
  }

  listenerCount<K extends keyof Events & string>(event: K): number {
    return this.inner.listenerCount(event);
  }
}
