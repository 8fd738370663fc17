// The request's ranges as the runtime gives them (EngineInfo.request.limits): clamping a typed
// value and saying so, in one place for the form, the guidance view and the bench.
import type { NumberRange } from '../lib/protocol';

export const clamp = (v: number, r: NumberRange) => Math.min(r.max, Math.max(r.min, v));

/** A scale as the reader means it: at most 3 decimals (a slider's float noise removed). */
export const tidy = (v: number) => Math.round(v * 1000) / 1000;

/** A typed guidance scale settled into its range: the value to keep and what to tell the reader
 * ('' when nothing changed; null value when it is no number, and the field keeps its old value). */
export function settleScale(v: number, r: NumberRange): { value: number | null; note: string } {
  if (!Number.isFinite(v)) return { value: null, note: `the guidance scale is a number from ${r.min} to ${r.max}` };
  const c = tidy(clamp(v, r));
  return { value: c, note: c !== tidy(v) ? `the guidance scale is ${r.min} to ${r.max}: set to ${c}` : '' };
}

/** A random whole number in the range (the form's "random" seed). */
export function randomIn(r: NumberRange, random: () => number = Math.random): number {
  return r.min + Math.floor(random() * (r.max - r.min + 1));
}

/** `n` other seeds near `seed` inside the range: the next ones, or the previous ones at the top. */
export function otherSeeds(seed: number, n: number, r: NumberRange): number[] {
  return Array.from({ length: n }, (_, k) => (seed + k + 1 <= r.max ? seed + k + 1 : seed - k - 1));
}

/** Is v a whole number in the range? (The bench's parameters are checked with it.) */
export const wholeIn = (v: number, r: NumberRange) => Number.isInteger(v) && v >= r.min && v <= r.max;
