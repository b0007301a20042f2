/** Sizes as qemu-img and qemu-io write them: `64M`, `4k`, `1G`, `512`. */

const UNITS: Record<string, number> = {
  '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60,
};

/** Parses a size with an optional binary suffix; returns null when it is not one. */
export function parseSize(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtpeBKMGTPE]?)\s*$/.exec(text);
  if (!m) return null;
  const value = Math.round(Number(m[1]) * UNITS[m[2]!.toLowerCase()]!);
  return Number.isSafeInteger(value) ? value : null;
}

/** Like QEMU's size_to_str: `64 MiB`, `1.5 GiB`, `512 B`. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let i = 0;
  let v = bytes;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  if (i === 0) return `${bytes} B`;
  const text = v >= 100 ? v.toFixed(0) : v.toFixed(v % 1 === 0 ? 0 : 3).replace(/\.?0+$/, '');
  return `${text} ${units[i]}`;
}
