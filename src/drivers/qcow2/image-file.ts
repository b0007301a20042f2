/**
 * The host side of a qcow2 image: byte I/O on the `file` child, with the
 * vectored write and truncation that a plain file node offers.
 */
import type { BlockNode } from '../../block/node.js';
import { FileNode } from '../file.js';

export class ImageFile {
  /** The plain file under the image, when it is one: its lean I/O methods skip a layer of promises. */
  private readonly host: FileNode | null;

  constructor(readonly node: BlockNode) {
    this.host = node instanceof FileNode ? node : null;
  }

  get length(): number {
    return this.node.size;
  }

  get path(): string {
    return this.node.filename;
  }

  read(offset: number, buf: Buffer): Promise<void> {
    if (this.host && buf.length > 0) return this.host.pread(buf, offset);
    return this.node.read(offset, buf);
  }

  write(offset: number, buf: Buffer): Promise<void> {
    if (this.host && buf.length > 0) return this.host.pwrite(buf, offset);
    return this.node.write(offset, buf);
  }

  /** A read with a completion callback (one promise fewer on the hot path when the child is a plain file). */
  readCallback(offset: number, buf: Buffer, done: (err: unknown) => void): void {
    if (this.host && buf.length > 0) this.host.preadCallback(buf, offset, done);
    else this.read(offset, buf).then(() => done(null), done);
  }

  /** A write with a completion callback (one promise fewer on the hot path when the child is a plain file). */
  writeCallback(offset: number, buf: Buffer, done: (err: unknown) => void): void {
    if (this.host && buf.length > 0) this.host.pwriteCallback(buf, offset, done);
    else this.write(offset, buf).then(() => done(null), done);
  }

  /** Several buffers at consecutive offsets, in one system call when the child allows it. */
  writev(offset: number, bufs: Buffer[]): Promise<void> {
    if (bufs.length === 1) return this.node.write(offset, bufs[0]!);
    if (this.host) return this.host.writev(offset, bufs);
    return this.writeEach(offset, bufs);
  }

  sync(): Promise<void> {
    return this.node.flush();
  }

  /** Shrinks or grows the file; returns false when the child cannot be resized. */
  async truncate(length: number): Promise<boolean> {
    if (this.node instanceof FileNode) {
      await this.node.truncate(length);
      return true;
    }
    return false;
  }

  private async writeEach(offset: number, bufs: Buffer[]): Promise<void> {
    let at = offset;
    for (const b of bufs) {
      await this.node.write(at, b);
      at += b.length;
    }
  }
}

/** Opens a host file as an ImageFile for the library functions (info, check, create). */
export async function openImageFile(path: string, readOnly: boolean): Promise<ImageFile> {
  const node = await FileNode.open(path, { readOnly });
  return new ImageFile(node);
}

export function closeImageFile(file: ImageFile): Promise<void> {
  return file.node.close();
}
