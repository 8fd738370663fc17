// Reading the Trace's tensors for drawing. Views only *display* what the runtime computed: these
// helpers slice, find a colour range and paint; they never compute anything the model computes.
import { interpolateRdBu, interpolateViridis } from 'd3-scale-chromatic';
import type { TensorMsg } from './protocol';

const views = new WeakMap<ArrayBuffer, Float32Array | Uint8Array>();

/** The tensor's values as a typed array (cached per buffer: messages are immutable). */
export function values(t: TensorMsg): Float32Array {
  let v = views.get(t.data);
  if (!v) {
    v = t.dtype === 'uint8' ? new Uint8Array(t.data) : new Float32Array(t.data);
    views.set(t.data, v);
  }
  return v as Float32Array;
}

/** Row-major slice [c] of a [1, C, H, W] (or [C, H, W]) tensor. */
export function channel(t: TensorMsg, c: number): Float32Array {
  const [h, w] = t.shape.slice(-2);
  return values(t).subarray(c * h * w, (c + 1) * h * w);
}

/** Index of one [C, H, W] block of a batched tensor ([B, C, H, W]): the b-th item. */
export function item(t: TensorMsg, b: number): Float32Array {
  const per = t.shape.slice(1).reduce((a, d) => a * d, 1);
  return values(t).subarray(b * per, (b + 1) * per);
}

/** [min, max] of some arrays together (display range). */
export function extent(...arrays: ArrayLike<number>[]): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const a of arrays) {
    for (let i = 0; i < a.length; i++) {
      const x = a[i];
      if (x < lo) lo = x;
      if (x > hi) hi = x;
    }
  }
  return Number.isFinite(lo) ? [lo, hi] : [0, 0];
}

/** Symmetric range around 0, for signed quantities (noise, latents, embeddings). */
export function symmetric(...arrays: ArrayLike<number>[]): [number, number] {
  const [lo, hi] = extent(...arrays);
  const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
  return [-m, m];
}

export type Scheme = 'diverging' | 'sequential';

/** A CSS colour for v on [lo, hi]: blue–white–red for signed values, viridis for magnitudes. */
export function colour(v: number, [lo, hi]: [number, number], scheme: Scheme): string {
  const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
  const c = Math.min(1, Math.max(0, t));
  return scheme === 'diverging' ? interpolateRdBu(1 - c) : interpolateViridis(c);
}

const LUT = new Map<Scheme, Uint8ClampedArray>();

function lut(scheme: Scheme): Uint8ClampedArray {
  let table = LUT.get(scheme);
  if (!table) {
    table = new Uint8ClampedArray(256 * 3);
    const probe = document.createElement('canvas').getContext('2d')!;
    for (let i = 0; i < 256; i++) {
      probe.fillStyle = colour(i / 255, [0, 1], scheme);
      probe.fillRect(0, 0, 1, 1);
      const d = probe.getImageData(0, 0, 1, 1).data;
      table.set([d[0], d[1], d[2]], i * 3);
    }
    LUT.set(scheme, table);
  }
  return table;
}

/** Paint an h×w grid of values on [lo, hi] into a canvas of h×w pixels (CSS scales it up). */
export function paint(canvas: HTMLCanvasElement, data: ArrayLike<number>, h: number, w: number, range: [number, number], scheme: Scheme) {
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  const img = ctx.createImageData(w, h);
  const table = lut(scheme);
  const [lo, hi] = range;
  const span = hi > lo ? hi - lo : 1;
  for (let i = 0; i < h * w; i++) {
    const k = Math.min(255, Math.max(0, Math.round(((data[i] - lo) / span) * 255))) * 3;
    img.data[i * 4] = table[k];
    img.data[i * 4 + 1] = table[k + 1];
    img.data[i * 4 + 2] = table[k + 2];
    img.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

/** Paint an RGBA uint8 [H, W, 4] image tensor. */
export function paintRGBA(canvas: HTMLCanvasElement, t: TensorMsg) {
  const [h, w] = t.shape;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  ctx.putImageData(new ImageData(new Uint8ClampedArray(t.data.slice(0)), w, h), 0, 0);
}

/** Short number for labels: 3 significant digits. */
export function num(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(2);
  return Number(v.toPrecision(3)).toString();
}
