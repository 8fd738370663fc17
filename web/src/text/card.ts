// The model card as the page receives it: the bundle manifest's `about` (export/manifest.py, from the
// checkpoint's explainer.json, written by train/stages.py's about()). A real Stable Diffusion bundle
// usually has none, or one without `facts`: every sentence built from it must then claim nothing it
// cannot know. Plain data and small accessors only; no sentence is written here.

/** One row of the model's own evaluation (facts.guidance.evaluation.rows). */
export interface EvalRow {
  scale: number;
  seeds?: number | null;
  object_accuracy?: number;
  background_accuracy?: number;
  pair_both_objects?: number;
}

/** about.facts: what the page's sentences quote about the model on screen (each block names its source). */
export interface CardFacts {
  trained_by?: string;
  training_minutes?: number;
  data?: { kind?: string; images?: number; image_size?: number[]; objects?: number; backgrounds?: number; source?: string };
  text_encoder?: {
    class?: string;
    layers?: number;
    hidden_size?: number;
    vocab_size?: number;
    max_length?: number;
    causal?: boolean;
    trained_on?: string;
    pairs?: number;
    objective?: string;
    minutes?: number;
    steps?: number;
    batch?: number;
    object_retrieval?: number;
    frozen_after?: boolean;
    source?: string;
  };
  sizes?: { image?: number[]; latent?: number[]; source?: string };
  unet?: { caption_dropout?: number; prediction?: string; cross_attention_resolutions?: number[]; source?: string };
  scheduler?: { ships?: string; timestep_spacing?: string; set_alpha_to_one?: boolean; why?: string; source?: string };
  attention?: { miou_object?: number; miou_background_word?: number; daam_coco?: number[]; source?: string };
  clip_image?: {
    trained?: string;
    knows?: string;
    minutes?: number;
    steps?: number;
    batch?: number;
    object_retrieval?: number;
    source?: string;
  };
  guidance?: {
    default?: number;
    sd_default?: number;
    caption_dropout?: number;
    evaluation?: { prompts?: number; steps?: number; scheduler?: string; rows?: EvalRow[]; source?: string };
  };
  clip_cosine?: { real_own_prompt?: number; real_other_prompt?: number; source?: string };
}

/** The manifest's `about` object (all optional: most checkpoints have no explainer.json). */
export interface ModelCard {
  description?: string;
  examples?: string[];
  guidance?: number | null;
  vocabulary?: Record<string, string[]>;
  facts?: CardFacts;
}

/** The manifest's model facts the text quotes (a subset of lib/protocol's ModelFacts). */
export interface ModelSizes {
  image_size: [number, number];
  latent_size: [number, number];
  latent_channels: number;
  text_hidden_size: number;
  vae_scaling_factor?: number;
}

export type Card = ModelCard | null | undefined;

/** The card's facts, or null: a bundle without them gets sentences that claim nothing about its training. */
export function factsOf(card: Card): CardFacts | null {
  return card?.facts && typeof card.facts === 'object' ? card.facts : null;
}

/** True when the card says this project trained the model (the default model). */
export function trainedHere(card: Card): boolean {
  return factsOf(card)?.trained_by === 'this project';
}

/** The evaluation row at a scale, if the card has one. */
export function evalRow(card: Card, scale: number): EvalRow | null {
  return factsOf(card)?.guidance?.evaluation?.rows?.find((r) => r.scale === scale) ?? null;
}

/** Caption-dropout share (0.1 → 10 %), if the card states it. */
export function captionDropout(card: Card): number | null {
  const f = factsOf(card);
  const v = f?.unet?.caption_dropout ?? f?.guidance?.caption_dropout;
  return typeof v === 'number' ? v : null;
}
