/**
 * Protocol-level commands: capabilities negotiation, version, the command
 * list, the schema, and `quit`.
 */
import { QmpError } from '../errors.js';
import { introspect } from '../introspect.js';
import { command, type Command } from '../registry.js';
import { any, enumOf, int, listOf, str, struct } from '../schema.js';
import type { VersionInfo } from '../version.js';

export interface CoreDeps {
  /** Every registered command (for query-commands and query-qmp-schema). */
  commands(): readonly Command[];
  version: VersionInfo;
  /** When given, `quit` exists and calls it after answering. */
  onQuit?: () => void;
}

const qmpCapability = enumOf('QMPCapability', ['oob']);

export const versionSpec = struct('VersionInfo', {
  qemu: struct('VersionTriple', { major: int, minor: int, micro: int }),
  package: str,
});

export function coreCommands(deps: CoreDeps): Command[] {
  const list: Command[] = [
    command({
      name: 'qmp_capabilities',
      args: struct('q_obj_qmp_capabilities-arg', { '*enable': listOf(qmpCapability) }),
      allowBeforeNegotiation: true,
      handler(args, ctx) {
        if (ctx.session.negotiated) {
          throw QmpError.commandNotFound('Capabilities negotiation is already complete, command ignored');
        }
        // colo-blk offers no capability (no out-of-band execution), so any request is refused.
        if (args.enable && args.enable.length > 0) {
          throw QmpError.generic(`Capability ${args.enable.join(', ')} not available`);
        }
        ctx.session.enterCommandMode();
      },
    }),
    command({
      name: 'query-version',
      returns: versionSpec,
      handler: () => ({ qemu: { ...deps.version.qemu }, package: deps.version.package }),
    }),
    command({
      name: 'query-commands',
      returns: listOf(struct('CommandInfo', { name: str })),
      // QEMU lists them newest-registered first.
      handler: () => [...deps.commands()].reverse().map((c) => ({ name: c.name })),
    }),
    command({
      name: 'query-qmp-schema',
      returns: listOf(any),
      handler: () => introspect(deps.commands()),
    }),
  ];
  const onQuit = deps.onQuit;
  if (onQuit) {
    list.push(command({
      name: 'quit',
      handler(_args, ctx) {
        ctx.log.info('qmp.quit');
        ctx.afterResponse(onQuit);
      },
    }));
  }
  return list;
}
