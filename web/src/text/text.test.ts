// The text modules: the default card's numbers are quoted; a card-less bundle's text claims nothing
// about training; none of issue 27's false phrases appear; one notation.
import { describe, expect, it } from 'vitest';
// the committed card, as a string (Vite's ?raw): no Node types needed
import cardJson from '../../../models/default/explainer.json?raw';
import { articleText } from './article';
import type { ModelCard, ModelSizes } from './card';
import {
  attentionText,
  clipText,
  compositeCaption,
  decoderText,
  guidanceText,
  headerText,
  overviewText,
  refinerText,
  seedsText,
  statusText,
  stepCountText,
  textViewText,
  umapText,
} from './explain';
import { channelName, stepPhrase } from './notation';
import { allText, plain } from './parts';
import { coefficientMeaning, family, pndmText, schedulerText, startNote, updateLhs } from './scheduler';

const card = JSON.parse(cardJson) as ModelCard;
const tiny: ModelSizes = {
  image_size: [64, 64],
  latent_size: [16, 16],
  latent_channels: 4,
  text_hidden_size: 128,
  vae_scaling_factor: 0.679,
};
const sd: ModelSizes = {
  image_size: [512, 512],
  latent_size: [64, 64],
  latent_channels: 4,
  text_hidden_size: 768,
  vae_scaling_factor: 0.18215,
};
const run = {
  seed: 0,
  scale: 3,
  steps: 25,
  schedulerLabel: 'DDIM',
  timesteps: Array.from({ length: 25 }, (_, i) => 961 - 40 * i),
  tokens: 9,
  droppedWords: [],
  stepIndex: 7,
  timestep: 681,
  spacing: 'leading',
  alphaBarFirst: 0.00728,
};

/** Every sentence the modules can produce, for a card (or none) and a model. */
function everything(c: ModelCard | null, model: ModelSizes): string {
  const sched = ['ddim', 'euler', 'dpmpp_2m', 'pndm', 'lms'].map((s) =>
    allText(
      schedulerText(c, { scheduler: s, steps: 25, timesteps: s === 'pndm' ? [961, 921, 921, ...run.timesteps.slice(2)] : run.timesteps }),
    ),
  );
  return [
    headerText(c),
    allText(overviewText()),
    allText(textViewText(c, 77)),
    allText(clipText(c, true)),
    allText(clipText(c, false)),
    allText(attentionText(c, 77)),
    allText(refinerText(model)),
    allText(guidanceText(c, 7.5)),
    ...guidanceText(c).scales.map((x) => x.text),
    allText(decoderText(model)),
    allText(seedsText(4)),
    allText(umapText(15)),
    compositeCaption(),
    ...sched,
    ...articleText(c, model, 77, run).map((s) => [s.title, s.takeaway, plain(s.detail)].join('\n')),
  ].join('\n');
}

describe('the default model card', () => {
  const text = everything(card, tiny);
  const f = card.facts!;
  it('has the facts the text quotes', () => {
    expect(f.unet?.caption_dropout).toBe(0.1);
    expect(f.text_encoder?.pairs).toBe(40000);
    expect(f.guidance?.evaluation?.rows?.map((r) => r.scale)).toEqual([1, 3, 7.5]);
  });
  it('quotes the card’s numbers', () => {
    expect(text).toContain('10% of its examples');
    expect(text).toContain('40,000');
    expect(text).toContain(`${f.text_encoder!.minutes} minutes`);
    const r3 = f.guidance!.evaluation!.rows!.find((r) => r.scale === 3)!;
    expect(text).toContain(`${Math.round(r3.object_accuracy! * 100)}% at 3`);
    expect(text).toContain(`mIoU ${f.attention!.miou_object}`);
    expect(text).toContain('8×8 and 4×4');
    expect(text).toContain('starts it at 3');
    expect(text).toContain('trained afterwards');
    expect(text).toContain(String(f.clip_cosine!.real_own_prompt));
  });
});

describe('a bundle without a model card (real SD)', () => {
  for (const c of [null, {}, { description: '', examples: [], vocabulary: {} }] as (ModelCard | null)[]) {
    const text = everything(c, sd);
    it(`claims nothing about its training (${JSON.stringify(c)})`, () => {
      for (const claim of [
        'emoji',
        '40,000',
        'this project',
        'this model was trained',
        'This text encoder was trained',
        'mIoU 0.39',
        'starts it at',
      ])
        expect(text).not.toContain(claim);
      expect(text).toContain('does not say what its text encoder was trained on');
      expect(text).toContain('512×512');
    });
  }
});

describe('issue 27: no false phrase, one notation', () => {
  const texts = [everything(card, tiny), everything(null, sd)];
  const banned = [
    'millions of pictures',
    'where each word looks',
    'averages the last few',
    'if the model stopped',
    'what the model believes',
    'how noisy it should be',
    'in the context of the whole prompt',
    'points at',
    'trained together',
    'x_{t−1} =',
    'channel 0',
    'channels 0',
  ];
  for (const phrase of banned) it(`never says “${phrase}”`, () => texts.forEach((t) => expect(t).not.toContain(phrase)));
  it('names “Image Upscaler” only beside “VAE decoder”', () => {
    for (const t of texts) for (const line of t.split('\n')) if (line.includes('Image Upscaler')) expect(line).toContain('VAE decoder');
  });
  it('numbers channels from 1 and steps from 1', () => {
    expect(channelName(0)).toBe('channel 1');
    expect(stepPhrase(0, 25, 961)).toBe('step 1 of 25 (timestep 961)');
  });
  it('says the next x, not x_{t−1}', () => {
    expect(updateLhs(false, 40).math).toBe('x_{t′}');
    expect(updateLhs(false, 40).note).toContain('t − 40');
  });
});

describe('schedulers', () => {
  it('PNDM extrapolates and explains its extra UNet call', () => {
    const t = plain(pndmText({ scheduler: 'pndm', steps: 25, timesteps: [961, 921, 921, 881].concat(Array(22).fill(1)) }));
    expect(t).toContain('55');
    expect(t).toContain('not an average');
    expect(t).toContain('25 steps make 26 UNet calls');
    expect(t).toContain('timestep 921 appears twice');
  });
  it('DDIM names its paper and equation', () =>
    expect(plain(family({ scheduler: 'ddim', steps: 25, timesteps: run.timesteps }))).toContain('Song et al. 2021, eq. 12'));
  it('the last step lands on ᾱ₀, not 1', () => {
    expect(coefficientMeaning('alpha_prod_t_prev', 0.99915, { last: true, setAlphaToOne: false })).toContain('ᾱ₀');
    expect(coefficientMeaning('prev_timestep', -39)).toContain('ᾱ₀');
  });
  it('leading spacing starts at 961', () => {
    expect(
      plain(startNote({ scheduler: 'ddim', steps: 25, timesteps: run.timesteps, spacing: 'leading', alphaBarFirst: 0.00728 })!),
    ).toContain('starts at timestep 961, not 999');
    expect(startNote({ scheduler: 'euler', steps: 25, timesteps: [999, 500] })).toBeNull();
  });
  it('counts UNet calls apart from steps', () => {
    expect(stepCountText(25, 26)).toContain('26 UNet calls');
    expect(stepCountText(25, 25)).toBe('25 steps');
    expect(statusText('done', 26, 26, 25)).toContain('25 steps, 26 UNet calls');
  });
});

describe('never HTML', () => {
  it('has no markup in any sentence', () => {
    for (const t of [everything(card, tiny), everything(null, sd)])
      expect(t).not.toMatch(/<\/?(b|i|em|strong|sub|sup|span|a|p|br)\b[^>]*>/);
  });
});
