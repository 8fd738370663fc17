// The article ("How it works"): one section per stage, in the order the pipeline runs, with this run's
// numbers woven in. Facts about the model come from its card; without one, only the literature is cited.
import { type Card, type ModelSizes, factsOf, trainedHere } from './card';
import { dropoutSentence, guidanceFormula, scaleEvidence, stepCountText, x0Sentence } from './explain';
import { STAGES } from './notation';
import { type Paragraph, count, pct } from './parts';
import { startNote } from './scheduler';

export interface ArticleRun {
  seed?: number;
  scale?: number;
  steps?: number;
  schedulerLabel?: string;
  timesteps?: number[];
  tokens?: number;
  droppedWords?: string[];
  /** the selected step (0-based) and its timestep */
  stepIndex?: number | null;
  timestep?: number | null;
  spacing?: string;
  alphaBarFirst?: number;
}

export interface ArticleSection {
  id: 'what' | 'text' | 'refiner' | 'decoder' | 'howto';
  title: string;
  takeaway: string;
  detail: Paragraph[];
}

/** "A tiny …" after a colon: "a tiny …". */
const lower = (t: string) => t.charAt(0).toLowerCase() + t.slice(1);

export function articleText(card: Card, model: ModelSizes | null, maxLength: number, run: ArticleRun | null): ArticleSection[] {
  const f = factsOf(card);
  const here = trainedHere(card);
  const sizes = model ? `${model.latent_channels}×${model.latent_size[0]}×${model.latent_size[1]}` : null;

  // ---- what ----
  const what: Paragraph[] = [
    [
      'It works on a small latent, not on pixels. Three parts do the work, all running in your browser: the CLIP text encoder turns your words into vectors, the UNet — with guidance and a scheduler — removes noise from the latent step by step, and the VAE decoder turns the finished latent into pixels. ',
      `(The original Diffusion Explainer calls them ${STAGES.text.reference}, ${STAGES.refiner.reference} and ${STAGES.decoder.reference}; the VAE decoder does not enlarge a picture.)`,
    ],
  ];
  if (model)
    what.push([
      `The model loaded here makes images of ${model.image_size[0]}×${model.image_size[1]} pixels${card?.description ? `: ${lower(card.description.replace(/\.\s*$/, ''))}` : ''}.`,
    ]);

  // ---- text ----
  const te = f?.text_encoder;
  const text: Paragraph[] = [
    [
      `The prompt is first cut into tokens: common words become one token, rare words several pieces, and a start and an end token are added. The text encoder reads at most ${maxLength} tokens, markers included; anything after that is dropped.`,
    ],
  ];
  if (run?.tokens !== undefined) {
    const d = run.droppedWords ?? [];
    text.push([
      `Your prompt became ${run.tokens} tokens. `,
      d.length
        ? `${d.length} ${d.length === 1 ? 'word' : 'words'} did not fit and ${d.length === 1 ? 'was' : 'were'} dropped (${d.join(' ')}): the model never saw ${d.length === 1 ? 'it' : 'them'}.`
        : 'No word was dropped.',
    ]);
  }
  text.push([
    `The CLIP text encoder turns each token into a vector${model ? ` of ${model.text_hidden_size} numbers` : ''}. Its transformer is causal: a token’s vector depends on that token and the ones before it, so only the end token and the padding after it have seen the whole prompt. This grid${model ? ` of ${maxLength}×${model.text_hidden_size} numbers` : ''} is the text representation that steers every UNet step; a second one is made for the negative prompt (empty by default), and guidance needs both.`,
  ]);
  text.push(
    te?.trained_on
      ? [
          `This text encoder was trained by this project${te.minutes ? ` for ${te.minutes} minutes` : ''} on ${te.pairs ? `${count(te.pairs)} ` : ''}${f?.data?.kind ?? te.trained_on}, contrastively against a small image encoder as CLIP was, so captions of the same scene get similar vectors${te.object_retrieval !== undefined ? ` (it picks the right object among 48 captions for ${pct(te.object_retrieval)} of fresh scenes)` : ''}. Real Stable Diffusion uses a far larger CLIP, trained on hundreds of millions to billions of image–caption pairs (OpenAI’s 400 million for SD 1.x, LAION’s for SD 2.x).`,
        ]
      : [
          'CLIP’s text encoder (Radford et al. 2021) learnt from images and their captions, so similar descriptions get similar vectors; this bundle’s model card does not say what its text encoder was trained on.',
        ],
  );

  // ---- refiner ----
  const refiner: Paragraph[] = [
    [
      `The image is made in a latent${sizes ? ` of ${sizes} numbers` : ''}. It starts as random noise fixed by the seed${run?.seed !== undefined ? ` (this run: seed ${run.seed})` : ''}. At every step a neural network, the UNet, is given the current latent x_t, its timestep t — which says how noisy x_t is now — and the text representation, and predicts the noise in x_t.`,
      run?.stepIndex !== undefined && run?.stepIndex !== null && run?.timestep !== undefined && run?.timestep !== null
        ? ` At the step you selected, step ${run.stepIndex + 1}, the timestep is ${Math.round(run.timestep)}: high timesteps mean mostly noise, low ones an almost clean latent.`
        : '',
    ],
    [
      'To follow the prompt, the UNet predicts the noise twice per step, in one batch of 2: once with your prompt (ε_c) and once with the negative prompt, empty by default (ε_u). Guidance goes from ε_u towards ε_c and past it: ',
      ...guidanceFormula(),
      run?.scale !== undefined ? ` This run used a scale of ${run.scale}.` : '',
    ],
    dropoutSentence(card),
    [
      'A scale of 1 uses the prompt’s prediction alone, 0 here the negative prompt’s alone (diffusers treats every scale ≤ 1 as “no guidance”, so its 0 is not this 0). ',
      ...scaleEvidence(card),
    ],
    [
      'The scheduler picks which timesteps to visit and turns each guided prediction into the next x.',
      run?.schedulerLabel && run.steps !== undefined
        ? ` This run used ${run.schedulerLabel} with ${stepCountText(run.steps, run.timesteps?.length ?? run.steps)}`
        : '',
      run?.schedulerLabel && run.timesteps?.length
        ? `, from timestep ${Math.round(run.timesteps[0])} down to ${Math.round(run.timesteps[run.timesteps.length - 1])}.`
        : run?.schedulerLabel
          ? '.'
          : '',
      ' Fewer steps are faster but leave more for each step to fix; good schedulers make a few steps go a long way.',
    ],
  ];
  if (run?.timesteps?.length) {
    const s = startNote({
      scheduler: '',
      steps: run.steps ?? run.timesteps.length,
      timesteps: run.timesteps,
      spacing: run.spacing,
      alphaBarFirst: run.alphaBarFirst,
    });
    if (s) refiner.push(s);
  }
  if (f?.scheduler?.ships && f.scheduler.why) refiner.push([`This model ships ${f.scheduler.ships}: ${f.scheduler.why}.`]);

  // ---- decoder ----
  const decoder: Paragraph[] = [
    [
      'When the last step is done, the decoder of a variational autoencoder (VAE) turns the latent’s channels into RGB pixels.',
      model
        ? ` Here that is ${sizes} numbers into 3×${model.image_size[0]}×${model.image_size[1]} colour values. The latent is not a small picture but a code the decoder learnt to read; denoising in the small latent and decoding once at the end is what makes latent diffusion (Rombach et al. 2022) cheap enough to run here.`
        : '',
    ],
    x0Sentence(),
  ];

  // ---- how to ----
  const words = Object.values(card?.vocabulary ?? {})
    .flat()
    .slice(0, 12);
  const def = card?.guidance;
  const howto: Paragraph[] = [
    [
      'Try seeds. The same prompt with another seed starts from other noise and gives another image; the same seed and settings always give the same image.',
    ],
    [
      `Try the guidance scale. Lower values give the model more freedom; higher ones follow your words more closely, up to a point${def ? ` (for this model, best near ${def})` : ''}.`,
    ],
    [
      `Try the wording. Change one word at a time and watch what changes; ${here ? 'words its training captions never contained' : 'words the model never learned'} do little, and words past the token limit do nothing.`,
      words.length ? ` This model knows words such as ${words.join(', ')}.` : '',
    ],
    ['Step through the run. Use the timeline (or ← and →) to see every stage at any step.'],
  ];

  return [
    {
      id: 'what',
      title: 'What is Stable Diffusion?',
      takeaway:
        'Stable Diffusion starts from random numbers and removes predicted noise step by step until a picture that matches your words is left.',
      detail: what,
    },
    {
      id: 'text',
      title: 'Text encoder',
      takeaway: 'Your words become tokens, and the text encoder turns them into the vectors that steer every step.',
      detail: text,
    },
    {
      id: 'refiner',
      title: 'Denoising loop: UNet, guidance, scheduler',
      takeaway:
        'At each step the UNet predicts the noise, guidance leans the prediction towards the prompt, and the scheduler takes a step to a less noisy latent.',
      detail: refiner,
    },
    { id: 'decoder', title: 'VAE decoder', takeaway: 'The VAE decoder turns the finished latent into pixels.', detail: decoder },
    {
      id: 'howto',
      title: 'How to use this page',
      takeaway: 'Change one thing at a time — seed, scale, a word — and step through the run.',
      detail: howto,
    },
  ];
}
