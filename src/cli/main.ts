#!/usr/bin/env -S node --initial-old-space-size=64
/**
 * The `colo-blk` command: one binary, one subcommand per job.
 */
const USAGE = `usage: colo-blk <command> [options]

commands:
  demo                 run a primary/secondary pair, fail over, verify (npm start)
  img                  create, inspect, map and check images (like qemu-img)
  io                   run qemu-io style commands on an image
  daemon               run a storage daemon (qemu-storage-daemon style options)
  primary              run the primary side of a replicated disk
  secondary            run the secondary side of a replicated disk
  checkpoint|failover|status --qmp PATH
                       control a running daemon
  qmp SOCKET COMMAND   send one QMP command and print the result
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'io':
      return (await import('./io.js')).ioMain(rest);
    case 'img':
      return (await import('./img.js')).imgMain(rest);
    case 'secondary':
      return (await import('./secondary.js')).secondaryMain(rest);
    case 'primary':
      return (await import('./primary.js')).primaryMain(rest);
    case 'demo':
      return (await import('./demo.js')).demoMain(rest);
    case 'checkpoint':
    case 'failover':
    case 'status':
      return (await import('./colo.js')).coloMain(command, rest);
    case 'daemon':
      return (await import('./daemon.js')).daemonMain(rest);
    case 'qmp':
      return (await import('./qmp.js')).qmpMain(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return command === undefined ? 1 : 0;
    default:
      process.stderr.write(`colo-blk: unknown command '${command}'\n${USAGE}`);
      return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err: unknown) => {
    process.stderr.write(`colo-blk: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
