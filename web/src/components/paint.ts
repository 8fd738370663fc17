// Painting tensors on canvas: a value grid through the palette's diverging or sequential scale,
// an RGBA image tensor, and the latent's RGB composite (derive/latent.ts's one scaling).
import { latentRGBA } from '../derive/latent';
import type { TensorMsg } from '../lib/protocol';
import { diverging, sequential } from '../styles/palette';

export type Scheme = 'diverging' | 'sequential';

/** A CSS colour for v on [lo, hi] in the palette's scale. */
export function colour(v: number, [lo, hi]: [number, number], scheme: Scheme): string {
  const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
  const c = Math.min(1, Math.max(0, t));
  return scheme === 'diverging' ? diverging(c) : sequential(c);
}

/** A three-stop CSS gradient of the scale over `range` (a swatch beside a map). */
export function gradient(range: [number, number], scheme: Scheme): string {
  const [lo, hi] = range;
  return `linear-gradient(to right, ${colour(lo, range, scheme)}, ${colour((lo + hi) / 2, range, scheme)}, ${colour(hi, range, scheme)})`;
}

const LUT = new Map<Scheme, Uint8ClampedArray>();

/** 256 RGB entries of the scale, read back through a canvas (it parses every CSS colour form). */
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

function put(canvas: HTMLCanvasElement, rgba: Uint8ClampedArray<ArrayBuffer>, h: number, w: number) {
  canvas.width = w;
  canvas.height = h;
  canvas.getContext('2d')?.putImageData(new ImageData(rgba, w, h), 0, 0);
}

/** Paint an h×w grid of values on [lo, hi] into a canvas of h×w pixels (CSS scales it up). */
export function paint(canvas: HTMLCanvasElement, data: ArrayLike<number>, h: number, w: number, range: [number, number], scheme: Scheme) {
  const rgba = new Uint8ClampedArray(h * w * 4);
  const table = lut(scheme);
  const [lo, hi] = range;
  const span = hi > lo ? hi - lo : 1;
  for (let i = 0; i < h * w; i++) {
    const k = Math.min(255, Math.max(0, Math.round(((data[i] - lo) / span) * 255))) * 3;
    rgba[i * 4] = table[k];
    rgba[i * 4 + 1] = table[k + 1];
    rgba[i * 4 + 2] = table[k + 2];
    rgba[i * 4 + 3] = 255;
  }
  put(canvas, rgba, h, w);
}

/** Paint an RGBA uint8 [H, W, 4] image tensor (a view on its buffer: putImageData only reads it). */
export function paintImage(canvas: HTMLCanvasElement, t: TensorMsg) {
  const [h, w] = t.shape;
  put(canvas, new Uint8ClampedArray(t.data as ArrayBuffer), h, w);
}

/** Paint a latent as RGB (derive/latent.ts). */
export function paintLatent(canvas: HTMLCanvasElement, t: TensorMsg) {
  const { rgba, h, w } = latentRGBA(t);
  put(canvas, rgba, h, w);
}
