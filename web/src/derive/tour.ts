// The guided walk ("Walk me through it"): the pipeline in the order it runs, each stop naming what
// the highlighted element is with this run's own values. Pure: a Trace and the model's sizes in,
// the stops out (the Tour view highlights `target` and opens `stage` in the overview).
import type { Trace } from '../lib/protocol';
import { stepCountText } from '../text/explain';

export type TourStage = 'text' | 'refiner' | 'decoder';

export interface TourStop {
  id: string;
  title: string;
  text: string;
  /** a CSS selector of the element to highlight */
  target: string;
  /** the overview's stage to open for this stop (its part is the target), if any */
  stage?: TourStage;
}

export interface TourModel {
  latent_channels: number;
  latent_size: [number, number];
  image_size: [number, number];
  text_hidden_size: number;
}

/** What the walk quotes of a run (all from the Trace; the selected step is the one the views show). */
export interface TourFacts {
  prompt: string;
  negative: string;
  tokens: number;
  dropped: string[];
  maxLength: number;
  seed: number;
  scale: number;
  steps: number;
  calls: number;
  scheduler: string;
  stepIndex: number | null;
  timestep: number | null;
  done: boolean;
  modelMs: number | null;
  compare: string | null;
  hasUmap: boolean;
}

export function tourFacts(trace: Trace, maxLength: number, stepIndex: number | null, compare: string | null): TourFacts {
  const step = stepIndex !== null ? (trace.steps[stepIndex] ?? null) : null;
  return {
    prompt: trace.request.prompt,
    negative: trace.request.negativePrompt,
    tokens: trace.tokens.length,
    dropped: trace.tokens.droppedWords,
    maxLength,
    seed: trace.request.seed,
    scale: trace.request.guidance,
    steps: trace.request.steps,
    calls: trace.timesteps.length,
    scheduler: trace.schedulerLabel,
    stepIndex: step ? step.index : null,
    timestep: step ? step.timestep : null,
    done: trace.done,
    modelMs: trace.timingsMs.total ?? null,
    compare,
    hasUmap: trace.steps.some((s) => s.umap !== null),
  };
}

const q = (t: string) => `“${t.length > 60 ? `${t.slice(0, 59)}…` : t}”`;

/** The stops, in the pipeline's order. Without a run (`f` null) each stop says what it will show. */
export function tourStops(f: TourFacts | null, model: TourModel | null): TourStop[] {
  const none = 'Press Generate and this stop quotes your run.';
  const latent = model ? `${model.latent_channels}×${model.latent_size[0]}×${model.latent_size[1]}` : 'small';
  const at =
    f && f.stepIndex !== null && f.timestep !== null
      ? `step ${f.stepIndex + 1} of ${f.calls} (timestep ${Math.round(f.timestep)})`
      : 'the selected step';
  const pixels = model ? `3×${model.image_size[0]}×${model.image_size[1]}` : 'RGB';
  return [
    {
      id: 'prompt',
      title: 'Your prompt',
      target: '[data-testid=prompt-form] textarea',
      text: f
        ? `This run drew ${q(f.prompt || '(empty prompt)')}${f.negative ? `, with the negative prompt ${q(f.negative)}` : ''}.`
        : 'Everything starts from these words. Write a prompt and press Generate.',
    },
    {
      id: 'tokens',
      title: 'Tokens',
      stage: 'text',
      target: '[data-part=tokenizer]',
      text: f
        ? `The tokenizer cut it into ${f.tokens} tokens, start and end markers included (the text encoder reads at most ${f.maxLength}).${f.dropped.length ? ` ${f.dropped.length} word${f.dropped.length === 1 ? ' was' : 's were'} dropped: ${f.dropped.join(' ')}.` : ''}`
        : `The prompt is cut into tokens. ${none}`,
    },
    {
      id: 'text',
      title: 'Text representation',
      stage: 'text',
      target: '[data-part=encoder]',
      text: `The text encoder turns the tokens into ${model ? `a ${f?.maxLength ?? 77}×${model.text_hidden_size} grid of numbers, one vector per position` : 'one vector per position'}: the text representation every UNet step reads. A second one is made for the negative prompt${f?.negative ? '' : ' (empty here)'}.`,
    },
    {
      id: 'noise',
      title: 'Noise',
      stage: 'refiner',
      target: '[data-part=latent]',
      text: f
        ? `The run starts from ${latent} random numbers fixed by seed ${f.seed}: the latent x_T. The same seed always gives the same noise.`
        : `The run starts from a ${latent} latent of random numbers, fixed by the seed. ${none}`,
    },
    {
      id: 'unet',
      title: 'The UNet’s two predictions',
      stage: 'refiner',
      target: '[data-part=unet]',
      text: `At ${at} the UNet predicts the noise in the latent twice, in one batch of 2: ε_u without the prompt and ε_c with it.`,
    },
    {
      id: 'guidance',
      title: 'Guidance',
      stage: 'refiner',
      target: '[data-part=guidance]',
      text: f
        ? `Guidance mixes them: ε̂ = ε_u + ${f.scale}·(ε_c − ε_u). A scale of ${f.scale} goes ${f.scale > 1 ? 'past' : f.scale === 1 ? 'exactly to' : 'only part of the way to'} the prompt’s prediction.`
        : 'Guidance mixes them: ε̂ = ε_u + s·(ε_c − ε_u), with the guidance scale s.',
    },
    {
      id: 'scheduler',
      title: 'Scheduler update',
      stage: 'refiner',
      target: '[data-part=scheduler]',
      text: f
        ? `${f.scheduler} uses ε̂ to take one step to a less noisy latent; this run takes ${stepCountText(f.steps, f.calls)}.`
        : 'The scheduler uses ε̂ to take one step to a less noisy latent, and the loop repeats.',
    },
    {
      id: 'x0',
      title: 'Predicted x̂₀',
      stage: 'refiner',
      target: '[data-part=x0]',
      text: `At ${at} the current guess of the clean latent, x̂₀, is what the loop would end at if this step’s noise estimate were exact: blurry early, sharper later.`,
    },
    {
      id: 'decoder',
      title: 'VAE decoder',
      stage: 'decoder',
      target: '[data-part=decoder]',
      text: `After the last step the VAE decoder turns the ${latent} latent into ${pixels} colour values.`,
    },
    {
      id: 'image',
      title: 'The image',
      target: '[data-view=image]',
      text: f
        ? f.done
          ? `Your image, after ${stepCountText(f.steps, f.calls)}${f.modelMs !== null ? `; the model took ${(f.modelMs / 1000).toFixed(2)} s` : ''}.`
          : 'Your image appears here while the run goes on.'
        : `The image appears here. ${none}`,
    },
    {
      id: 'seeds',
      title: 'Seeds',
      target: '[data-view=seeds]',
      text: f
        ? `Seed ${f.seed} fixed this run’s noise; other seeds start from other noise and give other pictures of the same prompt.`
        : 'Other seeds start from other noise and give other pictures of the same prompt.',
    },
    {
      id: 'scale',
      title: 'Guidance scale',
      target: '[data-view=guidance]',
      text: f
        ? `This run used scale ${f.scale}; the row here runs the same seed at other scales so you can see what the scale does.`
        : 'The same seed at other guidance scales shows what the scale does.',
    },
    {
      id: 'compare',
      title: 'Compare two prompts',
      target: '[data-view=compare]',
      text: f?.compare
        ? `${q(f.compare)} ran from the same noise as ${q(f.prompt)}: every difference comes from the words.`
        : 'A second prompt runs from the same noise and settings, so every difference comes from the words (write one under “Compare with a second prompt”).',
    },
    {
      id: 'umap',
      title: 'The map of guesses',
      target: '[data-view=umap]',
      text: f?.hasUmap
        ? `Each step’s x̂₀ of this run is placed among reference runs: near dots are similar guesses.`
        : 'Where the bundle has reference runs, each step’s x̂₀ is placed among them: near dots are similar guesses.',
    },
    {
      id: 'attention',
      title: 'Cross-attention',
      target: '[data-view=attention]',
      text: f
        ? `Where the image attended to each of the ${f.tokens} tokens at ${at}: a hint of where a word acts, not an outline.`
        : 'Where the image attends to each word: a hint of where a word acts, not an outline.',
    },
  ];
}

/** A stop number from the URL (?tour=N, 1-based) as an index, or null. */
export function tourIndex(param: string | null, count: number): number | null {
  if (param === null) return null;
  const n = Number.parseInt(param, 10);
  if (!Number.isFinite(n)) return 0;
  return Math.min(count, Math.max(1, n)) - 1;
}

/** The article's view of a run (text/article.ts's ArticleRun): the Trace's fields it quotes. */
export function articleRun(trace: Trace | null, stepIndex: number | null) {
  if (!trace) return null;
  const step = stepIndex !== null ? (trace.steps[stepIndex] ?? null) : null;
  const spacing = trace.schedulerConfig?.timestep_spacing;
  const first = trace.timesteps[0];
  return {
    seed: trace.request.seed,
    scale: trace.request.guidance,
    steps: trace.request.steps,
    schedulerLabel: trace.schedulerLabel,
    timesteps: trace.timesteps,
    tokens: trace.tokens.length,
    droppedWords: trace.tokens.droppedWords,
    stepIndex: step ? step.index : null,
    timestep: step ? step.timestep : null,
    spacing: typeof spacing === 'string' ? spacing : undefined,
    alphaBarFirst: first !== undefined ? trace.alphasCumprod?.[Math.round(first)] : undefined,
  };
}
