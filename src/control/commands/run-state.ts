/**
 * `stop`, `cont` and `query-status`, with QEMU's names and results, on the
 * daemon's exports (see run-state-control.ts).
 */
import { command, type Command } from '../registry.js';
import { bool, enumOf, struct } from '../schema.js';
import type { RunStateControl } from '../run-state-control.js';

/** STOP and RESUME carry no data, which the typed sink cannot express. */
export interface DatalessEventSink {
  emitUnchecked(event: string): void;
}

export interface RunStateDeps {
  runState: RunStateControl;
  events?: DatalessEventSink;
}

const statusInfo = struct('StatusInfo', {
  running: bool,
  singlestep: bool,
  status: enumOf('RunState', ['running', 'paused']),
});

export function runStateCommands({ runState, events }: RunStateDeps): Command[] {
  return [
    command({
      name: 'stop',
      async handler() {
        if (!runState.running) return;
        await runState.pause();
        events?.emitUnchecked('STOP');
      },
    }),
    command({
      name: 'cont',
      handler() {
        if (runState.running) return;
        runState.resume();
        events?.emitUnchecked('RESUME');
      },
    }),
    command({
      name: 'query-status',
      returns: statusInfo,
      handler: () => ({ running: runState.running, singlestep: false, status: runState.running ? 'running' : 'paused' }),
    }),
  ];
}
