// Every view's explanatory sentences (besides the scheduler's, in scheduler.ts, and the article's, in
// article.ts): a one-line takeaway, then the detail. Facts about the model come from its card
// (card.ts); a bundle without them gets sentences that claim nothing about its training.
// Papers: Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM), Ho & Salimans 2022 (classifier-free
// guidance), Rombach et al. 2022 (latent diffusion), Radford et al. 2021 (CLIP), Tang et al. 2022
// (DAAM), McInnes et al. 2018 (UMAP).
import { type Card, type ModelSizes, captionDropout, evalRow, factsOf, trainedHere } from './card';
import { BATCH_OF_TWO, END_OF_WORD, SYM, STAGES, channelRange, stageTitle } from './notation';
import { type Paragraph, type ViewText, count, m, pct } from './parts';

// ---- shared sentences ------------------------------------------------------------------------------

/** x̂₀ = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t: what it is, and what it is not. */
export function x0Sentence(): Paragraph {
  return [
    'At every step the current guess of the clean latent is ',
    m('x̂₀ = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t'),
    ': the average of all the images that could still come out of this x_t, so it is blurry early and sharpens as the steps go. Stopping the run there would leave the noisy x_t, not this picture.',
  ];
}

/** Which steps a run decodes x̂₀ at (previewEvery) and what happens to the others (`replay`: no model to decode them). */
export function previewSentence(every: number, planned: number, replay = false): string {
  if (!(every > 1) || !(planned > 0)) return '';
  const k = every % 100;
  const th = k >= 11 && k <= 13 ? 'th' : (({ 1: 'st', 2: 'nd', 3: 'rd' } as Record<number, string>)[k % 10] ?? 'th');
  const decoded = Math.ceil(planned / every) + ((planned - 1) % every ? 1 : 0);
  const head = `This run decoded x̂₀ at every ${every}${th} step and the last (${decoded} of ${planned})`;
  return replay
    ? `${head}; the file holds no x̂₀ for the other steps, and a replay has no model to decode them.`
    : `${head}, so the views were ready soon after the image; any other step is decoded when you show it.`;
}

/** x̂₀ in one line, beside a decoded guess. */
export function x0Short(): string {
  return 'The decoded guess x̂₀ is the model’s current average guess (blurry early); stopping here would leave the noisy x_t, not this picture.';
}

/** The guidance formula, and the paper's w. */
export function guidanceFormula(s?: number): Paragraph {
  return [
    m(`ε̂ = ε_u + ${s ?? 's'}·(ε_c − ε_u)`),
    ' (classifier-free guidance, Ho & Salimans 2022; the paper writes it with ',
    m('w = s − 1'),
    ': ',
    m('ε̂ = (1+w)·ε_c − w·ε_u'),
    ').',
  ];
}

/** Why guidance works: the UNet learnt both predictions. */
export function dropoutSentence(card: Card): Paragraph {
  const d = captionDropout(card);
  return d !== null
    ? [`One UNet can make both predictions because this model was trained with an empty caption for ${pct(d)} of its examples.`]
    : [
        'One UNet can make both predictions because models meant for guidance are trained with an empty caption a share of the time (Stable Diffusion’s: 10%).',
      ];
}

/** Guidance "up to a point", with this model's own numbers when the card has them. */
export function scaleEvidence(card: Card): Paragraph {
  const rows = [1, 3, 7.5].map((s) => evalRow(card, s)).filter((r) => r && r.object_accuracy !== undefined);
  const def = card?.guidance ?? factsOf(card)?.guidance?.default;
  if (rows.length >= 2) {
    const ev = factsOf(card)!.guidance!.evaluation!;
    const obj = rows.map((r) => `${pct(r!.object_accuracy!)} at ${r!.scale}`).join(', ');
    const pairs = rows.every((r) => r!.pair_both_objects !== undefined)
      ? `; both objects of a pair: ${rows.map((r) => pct(r!.pair_both_objects!)).join(', ')}`
      : '';
    // why the default: where pairs (the harder test) are named most often, when the card has them
    const pairBest = pairs ? rows.reduce((a, b) => (b!.pair_both_objects! > a!.pair_both_objects! ? b : a))!.scale : null;
    const where = pairBest !== null && pairBest === def ? ', where both objects of a pair are named most often' : '';
    return [
      `Higher scales follow the prompt more closely only up to a point. This model, judged on ${ev.prompts ? `${ev.prompts} ` : ''}prompts it never saw in training: the right object in ${obj}${pairs}. `,
      def !== undefined && def !== null ? `So the page starts it at ${def}${where}; Stable Diffusion’s usual default is 7.5.` : '',
    ];
  }
  return [
    'Higher scales follow the prompt more closely only up to a point, then colours and shapes become harsh and over-saturated; 7.5 is Stable Diffusion’s usual default.',
  ];
}

// ---- page header and overview ----------------------------------------------------------------------

export function headerText(card: Card): string {
  return trainedHere(card)
    ? 'Stable Diffusion’s pipeline running in your browser, with a tiny model trained by this project: a Python controller in Pyodide drives onnxruntime-web, step by step.'
    : 'Stable Diffusion running in your browser: a Python controller in Pyodide drives onnxruntime-web, step by step.';
}

export function overviewText(): ViewText & { stages: typeof STAGES; loopIdle: string } {
  return {
    title: 'How Stable Diffusion turns a prompt into an image',
    takeaway:
      'Your words become vectors; starting from noise, the UNet and the scheduler remove predicted noise step by step; the VAE decoder turns the result into pixels.',
    detail: [
      [
        `The three stages are the text encoder, the denoising loop and the VAE decoder (the original Diffusion Explainer calls them ${STAGES.text.reference}, ${STAGES.refiner.reference} and ${STAGES.decoder.reference}: the VAE decoder does not enlarge a picture, it turns the latent into pixels).`,
      ],
    ],
    stages: STAGES,
    loopIdle: 'repeated once per step',
  };
}

/** "25 steps" — or "25 steps, 26 UNet calls" when a scheduler's warm-up adds calls (PNDM). */
export function stepCountText(requestedSteps: number, calls: number): string {
  return calls > requestedSteps
    ? `${requestedSteps} steps, ${calls} UNet calls (the scheduler’s warm-up asks the UNet again)`
    : `${requestedSteps} steps`;
}

export function statusText(phase: string, done: number, planned: number, requestedSteps?: number): string {
  const steps = requestedSteps !== undefined ? stepCountText(requestedSteps, planned) : `${planned} steps`;
  switch (phase) {
    case 'idle':
      return 'No run yet: press Generate to watch each stage work.';
    case 'text':
      return 'Encoding the prompt…';
    case 'refiner':
      return `Denoising: UNet call ${done} of ${planned}`;
    case 'decoder':
      return 'Decoding the final latent…';
    case 'done':
      return `Done: ${steps}`;
    case 'stopped':
      return `Stopped after ${done} of ${planned} UNet calls`;
    default:
      return '';
  }
}

// ---- text ------------------------------------------------------------------------------------------

export function textViewText(card: Card, maxLength: number): ViewText {
  const te = factsOf(card)?.text_encoder;
  const detail: Paragraph[] = [
    [
      `The prompt is split into tokens (CLIP’s byte-pair vocabulary; ${END_OF_WORD} marks a word’s end), a start and an end token are added, and the ids are padded to ${maxLength} positions. The text encoder turns them into one vector per position.`,
    ],
    [
      'CLIP’s text transformer is causal (Radford et al. 2021): each position’s vector depends on its token and the ones before it, never on later words. Only the end token, and the padding after it, has seen the whole prompt.',
    ],
  ];
  if (te?.trained_on)
    detail.push([
      `This text encoder (${te.layers ?? '?'} layers, ${te.hidden_size ?? '?'} numbers per position) was trained by this project on ${te.trained_on}; it knows only the words of those captions.`,
    ]);
  return {
    title: `Text encoder (the original Diffusion Explainer’s “${STAGES.text.reference}”)`,
    takeaway: `Your prompt becomes ${maxLength} token positions, and the text encoder turns each into a vector: the text representation every UNet step reads.`,
    detail,
  };
}

export function unknownWordsText(quoted: string, n: number): string {
  return `This model’s training captions never contained ${quoted}: it will ignore or misread ${n === 1 ? 'it' : 'them'}. Its model card lists every word it was trained on.`;
}

export function emptyNegativeText(): string {
  return 'Empty negative prompt: the unconditional branch encodes just the start and end tokens and the padding.';
}

export function droppedText(maxLength: number): string {
  return `CLIP reads only ${maxLength} tokens, markers included; these words were dropped and the model never sees them:`;
}

export function emptyPromptText(negativeEmpty: boolean): string {
  return negativeEmpty
    ? 'An empty prompt: the model draws without a prompt — both branches see only the start and end tokens and padding.'
    : 'An empty prompt: the conditional branch sees only the start and end tokens; guidance then pushes away from the negative prompt.';
}

// ---- CLIP --------------------------------------------------------------------------------------------

export function clipText(card: Card, hasTower: boolean): ViewText {
  const f = factsOf(card);
  const detail: Paragraph[] = [
    [
      'CLIP (Radford et al. 2021) is a text encoder and an image encoder trained contrastively on images and captions: a matching image and caption are pulled to the same direction, all other pairs pushed apart. What gets aligned is one vector per caption — the end token’s state, projected. The UNet reads all the per-token states instead, which this training does not align with images directly. Stable Diffusion keeps only the text encoder.',
    ],
  ];
  const te = f?.text_encoder;
  const tower = f?.clip_image;
  if (te?.trained_on && tower) {
    detail.push([
      `This model’s text encoder was trained by this project (${te.minutes} minutes, ${count(te.pairs ?? 0)} emoji scenes). The image encoder used here was trained afterwards (${tower.minutes} minutes) against the frozen text encoder; it knows ${tower.knows ?? 'only the training scenes'}.`,
    ]);
  }
  const cos = f?.clip_cosine;
  if (hasTower && cos?.real_own_prompt !== undefined) {
    detail.push([
      `Its cosines are on their own scale: a real scene scores about ${cos.real_own_prompt} with its own prompt and ${String(cos.real_other_prompt ?? '?').replace('-', '−')} with another; OpenAI’s CLIP gives matching pairs only about 0.3 (Hessel et al. 2021). Compare prompts with each other here, not with CLIP numbers elsewhere.`,
    ]);
  }
  if (!hasTower) {
    detail.push([
      'This bundle has no CLIP image encoder: Stable Diffusion checkpoints ship only CLIP’s text half, so there are no live similarity numbers here. (This page’s default model ships an image encoder trained against its text encoder, so with it this view scores each run’s images.)',
    ]);
  }
  return {
    title: 'CLIP connects text with image',
    takeaway: hasTower
      ? 'CLIP scores how well a picture matches a prompt; here the model’s own small CLIP scores this run’s images.'
      : 'CLIP scores how well a picture matches a prompt; Stable Diffusion keeps only its text half.',
    detail,
  };
}

// ---- attention ------------------------------------------------------------------------------------

export function attentionText(card: Card, maxLength: number): ViewText {
  const f = factsOf(card);
  const res = f?.unet?.cross_attention_resolutions;
  const detail: Paragraph[] = [
    [
      `In every cross-attention layer the image positions are the queries and the ${maxLength} token positions the keys: each image position takes a softmax over the tokens, its share of each word. A word’s map is that share, averaged over the heads, upsampled to the latent grid and summed over the UNet’s cross-attention layers (DAAM, Tang et al. 2022), inside the UNet graph. Conditional branch only (the prompt, not the negative prompt).`,
    ],
  ];
  if (res?.length)
    detail.push([
      `In this UNet those layers work at ${res.map((r) => `${r}×${r}`).join(' and ')}, so a map is a smooth upsampling of at most ${res[0]}×${res[0]} cells.`,
    ]);
  detail.push([
    'At each image position the shares sum to 1 over all positions (start, words, end, padding), and much of it often goes to the start token, which carries no word: compare words with each other, by where they are bright.',
  ]);
  const a = f?.attention;
  detail.push(
    a?.miou_object !== undefined
      ? [
          `A map shows correlation, not a segmentation: thresholded, this model’s object-word maps overlap the object with mIoU ${a.miou_object}${a.miou_background_word !== undefined ? ` (background words ${a.miou_background_word})` : ''}; DAAM reports ${a.daam_coco?.join('–') ?? '0.59–0.65'} on COCO with real Stable Diffusion.`,
        ]
      : [
          'A map shows correlation, not a segmentation: DAAM reports an mIoU of 0.59–0.65 against object masks on COCO with real Stable Diffusion.',
        ],
  );
  return {
    title: 'Cross-attention: where the image attends to each word',
    takeaway: 'Each map shows which parts of the image took in one word’s information — a hint of where the word acts, not an outline.',
    detail,
  };
}

// ---- the denoising loop (refiner) ------------------------------------------------------------------

export function refinerText(model?: ModelSizes | null): ViewText {
  const shape = model ? `${model.latent_channels} channels × ${model.latent_size[0]}×${model.latent_size[1]}` : 'a few channels';
  return {
    title: `Denoising loop (the original Diffusion Explainer’s “${STAGES.refiner.reference}”)`,
    takeaway:
      'At each step the UNet predicts the noise in the current latent twice — with and without the prompt — and guidance and the scheduler turn the two into the next, less noisy latent.',
    detail: [
      [
        `The latent x_t is this step’s input, ${shape}. The two predictions ε_u (negative prompt, empty by default) and ε_c (prompt) come from ${BATCH_OF_TWO}: one UNet call. Guidance combines them into ε̂, which the scheduler uses.`,
      ],
      x0Sentence(),
    ],
  };
}

/** The false-colour composite's caption. */
export function compositeCaption(): string {
  return `${channelRange(0, 2)} as red, green, blue — false colour: latent channels are not colours; all on one scale, ± the largest |value| over every channel (0 = grey)`;
}

// ---- guidance --------------------------------------------------------------------------------------

export function guidanceText(card: Card, s?: number): ViewText & { scales: { s: string; text: string }[] } {
  return {
    title: 'Classifier-free guidance',
    takeaway: 'Guidance pushes the noise prediction from the unconditional one towards — and past — the prompt’s.',
    detail: [
      [
        `Each step the UNet predicts the noise for the negative prompt (ε_u; empty by default) and for the prompt (ε_c), in ${BATCH_OF_TWO}. The scale s says how far to go from the first towards — and past — the second: `,
        ...guidanceFormula(s),
      ],
      dropoutSentence(card),
      scaleEvidence(card),
    ],
    scales: [
      {
        s: 's = 0',
        text: 'only the unconditional (negative-prompt) prediction: the prompt is ignored. (diffusers skips guidance for every s ≤ 1 and uses the prompt’s prediction alone, so 0 here is not 0 there.)',
      },
      { s: 's = 1', text: 'only the conditional prediction: the prompt, with no extra push.' },
      {
        s: 's > 1',
        text: 'past the prompt’s prediction, away from the unconditional one: closer to the prompt up to a point, then harsh, over-saturated images.',
      },
    ],
  };
}

// ---- VAE decoder -------------------------------------------------------------------------------------

export function decoderText(model?: ModelSizes | null): ViewText {
  const detail: Paragraph[] = [];
  if (model) {
    const C = model.latent_channels,
      [lh, lw] = model.latent_size,
      [ih, iw] = model.image_size;
    const lat = C * lh * lw,
      pix = 3 * ih * iw,
      r = pix / lat;
    detail.push([
      `Diffusion runs in this small latent space, not on pixels (Rombach et al. 2022): a latent holds ${C}×${lh}×${lw} = ${count(lat)} numbers, the image 3×${ih}×${iw} = ${count(pix)} — ${Number.isInteger(r) ? r : r.toFixed(1)}× fewer values for the UNet to refine at every step. The VAE was trained to encode images into such latents and decode them back, so only this last stage works at full size.`,
    ]);
    if (model.vae_scaling_factor !== undefined) {
      detail.push([
        `The UNet’s latents are the VAE’s latents times its scaling factor ${Number(model.vae_scaling_factor.toPrecision(4))} (chosen so their spread is near 1; Stable Diffusion’s is 0.18215); before decoding the runtime multiplies them by 1/${Number(model.vae_scaling_factor.toPrecision(4))}.`,
      ]);
    }
  }
  detail.push(x0Sentence());
  return {
    title: stageTitle('decoder'),
    takeaway:
      'The VAE decoder turns the latent’s channels into RGB pixels; it learnt to read the latent, it does not enlarge a small picture.',
    detail,
  };
}

/** "Step 3 of 25 (timestep 881): the current guess x̂₀, decoded". */
export function decoderStepHeading(index0: number, planned: number, timestep: number): string {
  return `Step ${index0 + 1} of ${planned} (timestep ${Math.round(timestep)}): the current guess ${SYM.x0hat}, decoded`;
}

// ---- seeds, compare, UMAP --------------------------------------------------------------------------

export function seedsText(latentChannels: number): ViewText {
  return {
    title: 'Try different seeds',
    takeaway: 'The seed fixes the starting noise; the same prompt from other noise lands on another picture.',
    detail: [
      [
        'The seed fixes the initial noise, the latent the first step starts from. The runtime draws it with SplitMix64 and Box–Muller (runtime/noise.py), so a seed gives the very same noise on every platform and browser: same prompt, seed and settings ⇒ the same image.',
      ],
      [
        `The picture of x_T shows ${channelRange(0, 2)} as red, green, blue (false colour) on a scale symmetric around 0 (mid-grey = 0); the numbers are its smallest and largest value over all ${latentChannels} channels.`,
      ],
    ],
  };
}

export function compareText(): ViewText {
  return {
    title: 'Compare two prompts',
    takeaway:
      'Change one word: the second prompt runs from the same noise with the same settings, so every difference comes from the words.',
    detail: [
      [
        'Both runs start from the same seed’s noise and use the same scale, steps and scheduler; the charts show how far apart their x̂₀ guesses and decoded images are at every step.',
      ],
    ],
  };
}

export function umapText(k?: number): ViewText {
  return {
    title: 'Where the run goes: a map of x̂₀ guesses',
    takeaway: 'Nearby dots are similar guesses; only the neighbourhoods mean something, not the distances between groups.',
    detail: [
      [
        'Each dot is one step’s guess x̂₀ from a reference run, laid out in 2-D by UMAP (McInnes et al. 2018) so that near neighbours stay near. UMAP keeps only local neighbourhoods: the distances between clusters, the length of a track and the axes mean nothing.',
      ],
      [
        `A new point goes where umap-learn’s transform first places it — the mean of its ${k ?? 'k'} nearest reference points’ positions, weighted by UMAP’s membership strengths — without the optimisation umap-learn runs after that; a point whose nearest references come from different runs lands between them.`,
      ],
    ],
  };
}

// ---- where the views open --------------------------------------------------------------------------

/** Said where a view shows the teaching step (state/selection.svelte.ts, derive/teach.ts). */
export function teachingStepNote(index0: number): string {
  return `Opened at step ${index0 + 1}: in the first half of the run, the step where the prompt changes the noise prediction most (largest ‖ε_c − ε_u‖ / ‖ε_u‖). Near the end ε_u, ε_c and ε̂ look alike. Pick any step on the timeline.`;
}
