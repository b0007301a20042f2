/**
 * Runs requests one at a time for all clients, taking one request from each
 * client in turn, as QEMU's monitor dispatcher does: commands never overlap,
 * so a handler sees the graph as the previous command left it, and a client
 * that queues many commands cannot starve the others. A client's responses
 * come in the order of its requests.
 */
import { BlockError } from '../block/errors.js';
import type { Logger } from '../util/log.js';
import { QmpError } from './errors.js';
import type { JsonEvent } from './json-stream.js';
import { isQmpObject, newObject, type QmpObject, type QmpValue } from './json-value.js';
import { qdictOrder } from './json-write.js';
import type { CommandContext, CommandRegistry } from './registry.js';
import type { QmpSession, SessionHost } from './session.js';
import { nextTurn } from '../util/turn.js';

/** Let I/O in after this many requests handled without waiting. */
const BATCH = 64;

export class Dispatcher implements SessionHost {
  private readonly ready: QmpSession[] = [];
  private running = false;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly registry: CommandRegistry, private readonly log: Logger) {}

  wake(session: QmpSession): void {
    if (!this.ready.includes(session)) this.ready.push(session);
    if (!this.running) {
      this.running = true;
      void this.loop();
    }
  }

  forget(session: QmpSession): void {
    const i = this.ready.indexOf(session);
    if (i >= 0) this.ready.splice(i, 1);
  }

  /** Resolves when no request is queued or running. */
  idle(): Promise<void> {
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private async loop(): Promise<void> {
    try {
      let handled = 0;
      while (this.ready.length > 0) {
        const session = this.ready.shift()!;
        try {
          const request = session.take();
          // take() may already have re-queued the session (it parses more input as the queue drains).
          if (session.hasRequests && !session.isClosed && !this.ready.includes(session)) this.ready.push(session);
          if (!request) continue;
          await this.handle(session, request);
        } catch (err) {
          // A bug must cost one client its connection, not the daemon its control plane.
          this.log.error('qmp.dispatch_failed', { client: session.id, error: err, stack: err instanceof Error ? err.stack : undefined });
          session.close(false);
        }
        if (++handled % BATCH === 0) await nextTurn();
      }
    } finally {
      this.running = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  private async handle(session: QmpSession, request: JsonEvent): Promise<void> {
    const after: Array<() => void> = [];
    let response: QmpObject;
    if (request.kind === 'error') {
      response = errorResponse(QmpError.generic(request.message));
    } else {
      response = await this.execute(session, request.value, after);
    }
    try {
      session.send(response);
    } catch (err) {
      // A handler returned something that is not JSON: still answer.
      this.log.error('qmp.unserialisable_result', { error: err });
      const fallback = errorResponse(QmpError.generic(`internal error: ${(err as Error).message}`));
      if (request.kind === 'value' && isQmpObject(request.value) && 'id' in request.value) fallback.id = request.value.id!;
      session.send(fallback);
    }
    session.done();
    for (const fn of after) {
      try {
        fn();
      } catch (err) {
        this.log.error('qmp.after_response_failed', { error: err });
      }
    }
  }

  private async execute(session: QmpSession, value: QmpValue, after: Array<() => void>): Promise<QmpObject> {
    if (!isQmpObject(value)) return errorResponse(QmpError.generic('QMP input must be a JSON object'));
    const hasId = Object.prototype.hasOwnProperty.call(value, 'id');
    const reply = (r: QmpObject): QmpObject => {
      if (hasId) r.id = value.id!;
      return r;
    };
    const bad = checkEnvelope(value);
    if (bad) return reply(errorResponse(QmpError.generic(bad)));

    const name = value.execute as string;
    const args = (value.arguments ?? newObject()) as QmpObject;
    const cmd = this.registry.get(name);
    const started = performance.now();
    let error: QmpError | null = null;
    let result: unknown;
    if (!cmd || (!session.negotiated && !cmd.allowBeforeNegotiation)) {
      error = QmpError.commandNotFound(`The command ${name} has not been found`);
    } else {
      const ctx: CommandContext = { session, log: session.log, afterResponse: (fn) => after.push(fn) };
      try {
        result = await cmd.run(args, ctx);
      } catch (err) {
        error = QmpError.from(err);
        // Handlers report failures as QmpError or BlockError; anything else is a bug.
        if (!(err instanceof QmpError) && !BlockError.is(err)) {
          this.log.error('qmp.handler_failed', { command: name, error: err, stack: err instanceof Error ? err.stack : undefined });
        }
      }
    }
    if (error && !session.negotiated && error.class === 'CommandNotFound') {
      error = QmpError.commandNotFound("Expecting capabilities negotiation with 'qmp_capabilities'");
    }
    const ms = Math.round((performance.now() - started) * 1000) / 1000;
    if (error) {
      session.log.debug('qmp.command', { command: name, ms, errorClass: error.class, desc: error.desc });
      return reply(errorResponse(error));
    }
    session.log.debug('qmp.command', { command: name, ms });
    const r = newObject();
    r.return = (result === undefined ? newObject() : result) as QmpValue;
    return reply(r);
  }
}

function errorResponse(err: QmpError): QmpObject {
  const r = newObject();
  r.error = err.toWire();
  return r;
}

/**
 * QEMU's qmp_dispatch_check_obj: members are checked in QDict order, so
 * with several problems the one QEMU reports first is reported. colo-blk
 * offers no out-of-band execution, so `exec-oob` is an unexpected member.
 */
function checkEnvelope(req: QmpObject): string | null {
  for (const key of qdictOrder(Object.keys(req))) {
    const v = req[key];
    if (key === 'execute') {
      if (typeof v !== 'string') return "QMP input member 'execute' must be a string";
    } else if (key === 'arguments') {
      if (!isQmpObject(v)) return "QMP input member 'arguments' must be an object";
    } else if (key !== 'id') {
      return `QMP input member '${key}' is unexpected`;
    }
  }
  if (!Object.prototype.hasOwnProperty.call(req, 'execute')) return "QMP input lacks member 'execute'";
  return null;
}
