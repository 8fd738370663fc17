// RGBA images (uint8 H×W×4, row-major) resized for the trace file's previews and the animation's
// frames. Pure; the Python writer (runtime/tracefile.py downsample_rgba) uses the same rule.

export interface Rgba {
  data: Uint8Array;
  width: number;
  height: number;
}

/** Box-average by a whole factor f = ⌈max(w, h) / limit⌉ (a last partial block is dropped, sums
 * rounded half up); the image itself when it already fits. */
export function downsampleRgba(img: Rgba, limit: number): Rgba {
  const f = Math.ceil(Math.max(img.width, img.height) / limit);
  if (f <= 1) return img;
  const ow = Math.floor(img.width / f);
  const oh = Math.floor(img.height / f);
  const out = new Uint8Array(ow * oh * 4);
  const area = f * f;
  const half = Math.floor(area / 2);
  for (let oy = 0; oy < oh; oy++)
    for (let ox = 0; ox < ow; ox++)
      for (let c = 0; c < 4; c++) {
        let s = 0;
        for (let y = oy * f; y < oy * f + f; y++) for (let x = ox * f; x < ox * f + f; x++) s += img.data[(y * img.width + x) * 4 + c];
        out[(oy * ow + ox) * 4 + c] = Math.floor((s + half) / area);
      }
  return { data: out, width: ow, height: oh };
}

/** Nearest-neighbour resize to width × height (the animation's frames: pixels stay crisp). */
export function resizeNearest(img: Rgba, width: number, height: number): Rgba {
  if (img.width === width && img.height === height) return img;
  const out = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    const sy = Math.min(img.height - 1, Math.floor((y * img.height) / height));
    for (let x = 0; x < width; x++) {
      const sx = Math.min(img.width - 1, Math.floor((x * img.width) / width));
      const s = (sy * img.width + sx) * 4;
      const d = (y * width + x) * 4;
      out[d] = img.data[s];
      out[d + 1] = img.data[s + 1];
      out[d + 2] = img.data[s + 2];
      out[d + 3] = img.data[s + 3];
    }
  }
  return { data: out, width, height };
}

/** The animation's frame size: the largest image's side, at least `min` px (small previews are
 * scaled up by a whole factor so they stay crisp), at most `max`. */
export function frameSize(sides: number[], min = 256, max = 512): number {
  const side = Math.max(1, ...sides);
  return Math.min(max, side >= min ? side : side * Math.ceil(min / side));
}

/** A [H, W, 4] uint8 tensor's pixels as an Rgba (no copy). */
export function rgbaOf(t: { shape: number[]; data: ArrayBuffer }): Rgba {
  return { data: new Uint8Array(t.data), width: t.shape[1], height: t.shape[0] };
}

/** The denoising animation's frames: each step's decoded preview, then the final image, all at one
 * square-ish size (frameSize: previews scaled up by a whole factor, a bigger final image averaged down). */
export function denoisingFrames(previews: Rgba[], final: Rgba | null): Rgba[] {
  const all = final ? [...previews, final] : previews;
  if (!all.length) return [];
  const side = frameSize(previews.length ? previews.map((p) => Math.max(p.width, p.height)) : [Math.max(final!.width, final!.height)]);
  return all.map((img) => {
    const small = downsampleRgba(img, side);
    const f = side / Math.max(small.width, small.height);
    return resizeNearest(small, Math.round(small.width * f), Math.round(small.height * f));
  });
}
