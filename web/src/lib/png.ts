// PNG for RGBA images (8-bit): the trace file's previews and final image, and the "download the
// image" button. Encoding uses no row filters (like runtime/png.py); decoding reads all five and
// RGB too. Deflate is fflate's. Pure: no DOM (vitest checks it).
import { unzlibSync, zlibSync } from 'fflate';
import type { Rgba } from '../derive/image';

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
let crcTable: Uint32Array | null = null;

function crc32(bytes: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export class PngError extends Error {}

export function encodePng(img: Rgba): Uint8Array {
  const { data, width, height } = img;
  if (data.length !== width * height * 4) throw new PngError(`expected ${width * height * 4} bytes of RGBA, got ${data.length}`);
  const stride = width * 4;
  const raw = new Uint8Array(height * (stride + 1));
  for (let y = 0; y < height; y++) raw.set(data.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  const chunks: Uint8Array[] = [Uint8Array.from(SIGNATURE)];
  const chunk = (tag: string, body: Uint8Array) => {
    const out = new Uint8Array(12 + body.length);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, body.length);
    for (let i = 0; i < 4; i++) out[4 + i] = tag.charCodeAt(i);
    out.set(body, 8);
    dv.setUint32(8 + body.length, crc32(out.subarray(4, 8 + body.length)));
    chunks.push(out);
  };
  const head = new Uint8Array(13);
  const hv = new DataView(head.buffer);
  hv.setUint32(0, width);
  hv.setUint32(4, height);
  head.set([8, 6, 0, 0, 0], 8);
  chunk('IHDR', head);
  chunk('IDAT', zlibSync(raw, { level: 6 }));
  chunk('IEND', new Uint8Array(0));
  const out = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** An 8-bit RGBA or RGB, non-interlaced PNG → RGBA pixels; anything else throws a PngError saying why. */
export function decodePng(bytes: Uint8Array, maxSide = 1 << 16): Rgba {
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) throw new PngError('not a PNG image');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 8;
  let head: { w: number; h: number; depth: number; color: number; interlace: number } | null = null;
  const idat: Uint8Array[] = [];
  while (pos + 8 <= bytes.length) {
    const n = dv.getUint32(pos);
    const tag = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const body = bytes.subarray(pos + 8, pos + 8 + n);
    pos += 12 + n;
    if (tag === 'IHDR' && body.length >= 13) {
      const b = new DataView(body.buffer, body.byteOffset, body.byteLength);
      head = { w: b.getUint32(0), h: b.getUint32(4), depth: body[8], color: body[9], interlace: body[12] };
    } else if (tag === 'IDAT') idat.push(body);
    else if (tag === 'IEND') break;
  }
  if (!head) throw new PngError('a PNG without its header');
  const { w, h, depth, color, interlace } = head;
  if (depth !== 8 || (color !== 6 && color !== 2) || interlace || !(w > 0 && h > 0 && w <= maxSide && h <= maxSide))
    throw new PngError(`only 8-bit RGBA/RGB non-interlaced PNGs are read (this one: ${w}×${h}, depth ${depth}, colour type ${color})`);
  const bpp = color === 6 ? 4 : 3;
  const stride = w * bpp;
  const want = h * (stride + 1);
  const joined = new Uint8Array(idat.reduce((a, c) => a + c.length, 0));
  let at = 0;
  for (const c of idat) {
    joined.set(c, at);
    at += c.length;
  }
  let raw: Uint8Array;
  try {
    raw = unzlibSync(joined, { out: new Uint8Array(want) });
  } catch (e) {
    throw new PngError(`the PNG's pixel data is damaged (${(e as Error).message})`);
  }
  if (raw.length !== want) throw new PngError(`the PNG holds ${raw.length} bytes of pixels, ${w}×${h} needs ${want}`);
  const px = new Uint8Array(h * stride);
  for (let y = 0; y < h; y++) {
    const kind = raw[y * (stride + 1)];
    const src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = px.subarray(y * stride, (y + 1) * stride);
    const up = y ? px.subarray((y - 1) * stride, y * stride) : new Uint8Array(stride);
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? row[i - bpp] : 0;
      const b = up[i];
      const c = i >= bpp ? up[i - bpp] : 0;
      let p: number;
      if (kind === 0) p = 0;
      else if (kind === 1) p = a;
      else if (kind === 2) p = b;
      else if (kind === 3) p = (a + b) >> 1;
      else if (kind === 4) {
        const q = a + b - c;
        const pa = Math.abs(q - a);
        const pb = Math.abs(q - b);
        const pc = Math.abs(q - c);
        p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else throw new PngError(`the PNG uses an unknown row filter ${kind}`);
      row[i] = (src[i] + p) & 255;
    }
  }
  if (bpp === 4) return { data: px, width: w, height: h };
  const rgba = new Uint8Array(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    rgba[4 * i] = px[3 * i];
    rgba[4 * i + 1] = px[3 * i + 1];
    rgba[4 * i + 2] = px[3 * i + 2];
    rgba[4 * i + 3] = 255;
  }
  return { data: rgba, width: w, height: h };
}
