// Reading the Trace's tensors: typed views, slices, shapes and display ranges. Pure (no DOM), so
// every view reads a tensor the same way and vitest can check it. Views only *display* what the
// runtime computed: nothing here computes what the model computes.
import type { TensorMsg } from '../lib/protocol';

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

/** Channels, height and width of a [1, C, H, W] or [C, H, W] tensor (the last three axes). */
export function chw(t: TensorMsg | null | undefined): { c: number; h: number; w: number } {
  if (!t) return { c: 0, h: 0, w: 0 };
  const [c, h, w] = t.shape.slice(-3);
  return { c, h, w };
}

/** Row-major slice [c] of a [1, C, H, W] (or [C, H, W]) tensor: a view, no copy. */
export function channel(t: TensorMsg, c: number): Float32Array {
  const [h, w] = t.shape.slice(-2);
  return values(t).subarray(c * h * w, (c + 1) * h * w);
}

/** Every channel of a [1, C, H, W] tensor, in order. */
export function channels(t: TensorMsg | null | undefined): Float32Array[] {
  return t ? Array.from({ length: chw(t).c }, (_, c) => channel(t, c)) : [];
}

/** One [C, H, W] block of a batched tensor ([B, C, H, W]): the b-th item. */
export function item(t: TensorMsg, b: number): Float32Array {
  const per = t.shape.slice(1).reduce((a, d) => a * d, 1);
  return values(t).subarray(b * per, (b + 1) * per);
}

/** [min, max] of some arrays together (display range); [0, 0] when they are empty. */
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

/** Symmetric range around 0, for signed quantities (noise, latents, embeddings); [-1, 1] when all are 0. */
export function symmetric(...arrays: ArrayLike<number>[]): [number, number] {
  const [lo, hi] = extent(...arrays);
  const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
  return [-m, m];
}

/** [0, max] for non-negative quantities (attention, |differences|); [0, 1] when all are 0. */
export function fromZero(...arrays: ArrayLike<number>[]): [number, number] {
  return [0, extent(...arrays)[1] || 1];
}
