// One notation across the page (issue 27): step vs timestep, x_t and "the next x", channels numbered
// 1–4, one end-of-word marker, "one batch of 2", and the true name of each stage with the original
// Diffusion Explainer's name only beside it.

/** A step is one pass of the loop (1…N); a timestep is the training noise level t (0…999) it runs at. */
export const STEP = 'step';
export const TIMESTEP = 'timestep';

/** "step 3 of 25 (timestep 881)": steps counted from 1, timesteps as the runtime gave them. */
export function stepPhrase(index0: number, planned: number, timestep?: number | null): string {
  const t = timestep === null || timestep === undefined ? '' : ` (timestep ${fmtT(timestep)})`;
  return `step ${index0 + 1} of ${planned}${t}`;
}

/** A timestep as the runtime gave it: integers stay integers. */
export function fmtT(t: number): string {
  return Number.isInteger(t) ? String(t) : t.toFixed(1);
}

/** Latent channels are numbered 1…C on every view (a 0-based index in, a label out). */
export function channelName(index0: number): string {
  return `channel ${index0 + 1}`;
}

/** "channels 1–3": a range of channels, numbered from 1. */
export function channelRange(first0: number, last0: number): string {
  return `channels ${first0 + 1}–${last0 + 1}`;
}

/** The one end-of-word marker (CLIP's BPE writes </w> at a word's end). */
export const END_OF_WORD = '␣';
export const END_OF_WORD_TITLE = 'end of a word (</w> in CLIP’s vocabulary)';

/** The two noise predictions are one UNet call on a batch of two latents. */
export const BATCH_OF_TWO = 'one batch of 2';

/** Symbols, as plain strings the views may render as math. */
export const SYM = {
  xt: 'x_t',
  /** the latent a step produces: the next step's input (not x_{t−1}: a step jumps many timesteps) */
  xNext: 'x_{t′}',
  x0hat: 'x̂₀',
  epsU: 'ε_u',
  epsC: 'ε_c',
  epsHat: 'ε̂',
  alphaBar: 'ᾱ_t',
} as const;

export type Stage = 'text' | 'refiner' | 'decoder';

/** Each stage's true name, and the original Diffusion Explainer's name for it (shown only beside the true one). */
export const STAGES: Record<Stage, { name: string; reference: string; parts: string[] }> = {
  text: { name: 'Text encoder', reference: 'Text Representation Generator', parts: ['Tokenizer', 'CLIP text encoder'] },
  refiner: { name: 'Denoising loop', reference: 'Image Representation Refiner', parts: ['UNet', 'Guidance', 'Scheduler'] },
  decoder: { name: 'VAE decoder', reference: 'Image Upscaler', parts: ['VAE decoder'] },
};

/** "VAE decoder (the original Diffusion Explainer's “Image Upscaler”)". */
export function stageTitle(stage: Stage): string {
  const s = STAGES[stage];
  return `${s.name} (the original Diffusion Explainer’s “${s.reference}”)`;
}
