/**
 * Which host clusters hold metadata (header, L1, reftable, refblocks, L2
 * tables). Data I/O checks it so that a damaged L2 entry pointing at
 * metadata fails the request instead of reading or overwriting a table.
 */
export type MetadataKind = 'qcow2_header' | 'active L1 table' | 'refcount table' | 'refcount block' | 'active L2 table' | 'snapshot table';

export class MetadataMap {
  private readonly clusters = new Map<number, MetadataKind>();

  add(cluster: number, count: number, kind: MetadataKind): void {
    for (let i = 0; i < count; i++) this.clusters.set(cluster + i, kind);
  }

  remove(cluster: number, count = 1): void {
    for (let i = 0; i < count; i++) this.clusters.delete(cluster + i);
  }

  kindOf(cluster: number): MetadataKind | undefined {
    return this.clusters.get(cluster);
  }

  /** The kind of the first metadata cluster in [cluster, cluster + count), if any. */
  overlap(cluster: number, count: number): MetadataKind | undefined {
    if (this.clusters.size === 0) return undefined;
    for (let i = 0; i < count; i++) {
      const k = this.clusters.get(cluster + i);
      if (k) return k;
    }
    return undefined;
  }

  clear(): void {
    this.clusters.clear();
  }
}
