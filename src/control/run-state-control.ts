/**
 * What `stop`, `cont` and `query-status` act on. QEMU pauses the guest's
 * vCPUs, which stops its disk I/O; a storage daemon has no vCPUs, so it
 * pauses its exports instead: requests already in flight finish, new ones
 * wait at the door until `cont`. A COLO checkpoint needs exactly that on
 * the primary (no write may straddle the checkpoint).
 */
export interface RunStateControl {
  readonly running: boolean;
  /** Holds new requests on every export and waits for those in flight. */
  pause(): Promise<void>;
  resume(): void;
}
