// Latent → RGB: the one way a 4-channel latent is painted as a colour picture, so one latent looks
// the same in every view (the refiner's x_t, the seeds' x_T, the decoder's x̂₀).
//
// The scaling, once: channels 1, 2, 3 become red, green, blue on ONE symmetric range ±m, where m is
// the largest |value| over ALL the latent's channels (channel 4 included); 0 is mid-grey. One range
// for every channel keeps their relative sizes (a per-channel range would stretch a quiet channel to
// full colour). A latent with fewer than 3 channels is shown as grey from its channel 1. The same
// range colours the per-channel heat maps (`latentRange`), so tiles and composite agree.
import type { TensorMsg } from '../lib/protocol';
import { chw, symmetric, values } from './tensor';

/** The display range of a latent: symmetric around 0 over all its channels. */
export function latentRange(t: TensorMsg): [number, number] {
  return symmetric(values(t));
}

/** The latent as RGBA bytes (h × w × 4), scaled as this module's comment says. */
export function latentRGBA(t: TensorMsg): { rgba: Uint8ClampedArray<ArrayBuffer>; h: number; w: number } {
  const { c, h, w } = chw(t);
  const v = values(t);
  const m = latentRange(t)[1];
  const n = h * w;
  const rgba = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < 3; k++) rgba[i * 4 + k] = Math.round(127.5 + (127.5 * v[(c >= 3 ? k : 0) * n + i]) / m);
    rgba[i * 4 + 3] = 255;
  }
  return { rgba, h, w };
}

/** Channel k (0-based index) as the page names it: latent channels are numbered 1 … C everywhere. */
export const channelName = (k: number) => `channel ${k + 1}`;

/** "C channels × H×W" for a latent-shaped tensor. */
export function shapeLine(t: TensorMsg | null | undefined): string {
  const { c, h, w } = chw(t);
  return `${c} channel${c === 1 ? '' : 's'} × ${h}×${w}`;
}
