import { describe, expect, it } from 'vitest';
import type { RequestMsg, TensorMsg, Trace, UmapBases } from '../lib/protocol';
import { latentRGBA, latentRange, channelName, shapeLine } from './latent';
import { clamp, otherSeeds, randomIn, settleScale, wholeIn } from './limits';
import { UNSET_REQUEST, withDefaults } from './request';
import { sideKey, sideState, sideStatus } from './sideRuns';
import { absDifference, meanAbsDifference, norm, normOfDifference, rowNorms, sum } from './stats';
import { newestImage, stepAt, stepLine } from './steps';
import { channel, channels, chw, extent, fromZero, item, symmetric } from './tensor';
import { differing, droppedText, isSpecial, padding, quoteList, tokenText, unknownWords } from './tokens';
import { fitFrame, nearest, spriteTile } from './umap';

const tensor = (shape: number[], data: number[]): TensorMsg => ({ dtype: 'float32', shape, data: new Float32Array(data).buffer });
const request: RequestMsg = { prompt: 'a cat', negativePrompt: '', seed: 3, guidance: 7.5, steps: 4, scheduler: 'euler', previewEvery: 1 };
const trace = (over: Partial<Trace> = {}) =>
  ({ steps: [], timesteps: [900, 600, 300], done: false, cancelled: false, image: null, ...over }) as unknown as Trace;

describe('tensor', () => {
  const t = tensor([1, 2, 1, 2], [1, -2, 3, 0.5]);
  it('reads shapes and channels', () => {
    expect(chw(t)).toEqual({ c: 2, h: 1, w: 2 });
    expect(chw(null)).toEqual({ c: 0, h: 0, w: 0 });
    expect(Array.from(channel(t, 1))).toEqual([3, 0.5]);
    expect(channels(t).map((c) => Array.from(c))).toEqual([
      [1, -2],
      [3, 0.5],
    ]);
    expect(Array.from(item(tensor([2, 2], [1, 2, 3, 4]), 1))).toEqual([3, 4]);
  });
  it('finds display ranges', () => {
    expect(extent([1, -2], [3])).toEqual([-2, 3]);
    expect(extent([])).toEqual([0, 0]);
    expect(symmetric([1, -2], [3])).toEqual([-3, 3]);
    expect(symmetric([0])).toEqual([-1, 1]);
    expect(fromZero([0.2, 0.5])).toEqual([0, 0.5]);
    expect(fromZero([0])).toEqual([0, 1]);
  });
});

describe('stats', () => {
  it('norms and differences', () => {
    expect(norm([3, 4])).toBe(5);
    expect(normOfDifference([1, 1], [4, 5])).toBe(5);
    expect(rowNorms([3, 4, 0, 1], 2, 2)).toEqual([5, 1]);
    expect(Array.from(absDifference([1, 2], [3, 1]))).toEqual([2, 1]);
    expect(meanAbsDifference([1, 2], [3, 1])).toBe(1.5);
    expect(meanAbsDifference([0, 0, 0, 255], [2, 2, 2, 0], true)).toBe(2); // alpha skipped
    expect(
      Array.from(
        sum(
          [
            [1, 2],
            [3, 4],
          ],
          2,
        ),
      ),
    ).toEqual([4, 6]);
  });
});

describe('latent painting: one scaling everywhere', () => {
  it('scales every channel by the one max |value| over all channels (0 is grey)', () => {
    // 4 channels of 1 pixel: the 4th channel (8) sets the range for the three painted ones
    const t = tensor([1, 4, 1, 1], [4, -8, 0, 8]);
    expect(latentRange(t)).toEqual([-8, 8]);
    const { rgba, h, w } = latentRGBA(t);
    expect([h, w]).toEqual([1, 1]);
    expect(Array.from(rgba)).toEqual([Math.round(127.5 + 63.75), 0, 128, 255]);
  });
  it('shows a one-channel latent as grey', () => {
    expect(Array.from(latentRGBA(tensor([1, 1, 1, 1], [-1])).rgba)).toEqual([0, 0, 0, 255]);
  });
  it('numbers channels from 1 and states the shape', () => {
    expect(channelName(0)).toBe('channel 1');
    expect(shapeLine(tensor([1, 4, 8, 8], new Array(256).fill(0)))).toBe('4 channels × 8×8');
  });
});

describe('tokens', () => {
  const tok = {
    ids: [1, 10, 11, 12, 2, 2],
    tokens: ['<|startoftext|>', 'zor', 'blat</w>', 'cat</w>', '<|endoftext|>'],
    length: 5,
    truncated: false,
    droppedWords: ['x', 'y'],
  };
  it('names special tokens and strips the word end', () => {
    expect(isSpecial('<|endoftext|>')).toBe(true);
    expect(isSpecial('cat</w>')).toBe(false);
    expect(tokenText('cat</w>')).toBe('cat');
  });
  it('counts padding', () => expect(padding(tok)).toEqual({ n: 1, padId: 2, isEos: true }));
  it('joins unknown tokens into words, each once', () => {
    expect(unknownWords(tok, [true, false, false, true, true])).toEqual(['zorblat']);
    expect(unknownWords(tok, null)).toEqual([]);
  });
  it('cuts dropped words and quote lists', () => {
    expect(droppedText(tok, 2)).toEqual({ text: 'x ', more: 1 });
    expect(quoteList(['a', 'b', 'c'], 2)).toBe('‘a’, ‘b’ and 1 more words');
  });
  it('finds the tokens two prompts do not share', () => {
    const [a, b] = differing([1, 5, 2], [1, 6, 2]);
    expect([...a]).toEqual([1]);
    expect([...b]).toEqual([1]);
  });
});

describe('side runs', () => {
  it('keys a run by what varies and what stays', () => {
    expect(sideKey('seed', request, { seed: 4 })).toBe(sideKey('seed', { ...request, seed: 99 }, { seed: 4 }));
    expect(sideKey('seed', request, { seed: 4 })).not.toBe(sideKey('seed', { ...request, prompt: 'a dog' }, { seed: 4 }));
  });
  it('reads where a run stands', () => {
    expect(sideState(undefined, false, false)).toBe('idle');
    expect(sideState(undefined, true, true)).toBe('queued');
    expect(sideState(undefined, false, true)).toBe('stopped');
    expect(sideState(trace(), false, true)).toBe('running');
    expect(sideState(trace({ done: true }), false, true)).toBe('done');
    expect(sideState(trace({ done: true, cancelled: true }), false, true)).toBe('stopped');
    expect(sideStatus('running', trace({ steps: [{}] as never }))).toBe('running… step 1 of 3');
  });
});

describe('steps', () => {
  const s = { index: 1, timestep: 600.4, image: { shape: [1] } } as never;
  it('selects and describes a step', () => {
    expect(stepAt(trace({ steps: [s, s] }), 1)).toBe(s);
    expect(stepAt(trace(), null)).toBeNull();
    expect(stepLine(s, trace())).toBe('step 2 of 3, t = 600');
    expect(newestImage(trace({ steps: [s] }))).toEqual({ shape: [1] });
  });
});

describe('limits (from the runtime, never copied)', () => {
  const g = { min: 0, max: 20 };
  it('clamps and says so', () => {
    expect(clamp(25, g)).toBe(20);
    expect(settleScale(25, g)).toEqual({ value: 20, note: 'the guidance scale is 0 to 20: set to 20' });
    expect(settleScale(3.5, g)).toEqual({ value: 3.5, note: '' });
    expect(settleScale(NaN, g).value).toBeNull();
  });
  it('draws seeds inside the range', () => {
    expect(randomIn({ min: 0, max: 9 }, () => 0.999)).toBe(9);
    expect(otherSeeds(8, 3, { min: 0, max: 9 })).toEqual([9, 6, 5]); // as the seeds view always chose them
    expect(wholeIn(2.5, { min: 0, max: 9 })).toBe(false);
  });
  it('fills the request with the runtime defaults where nobody set a field', () => {
    const draft = { ...UNSET_REQUEST, prompt: 'typed while loading', guidance: 5 };
    const got = withDefaults(draft, request, (k) => k === 'guidance');
    expect(got).toEqual({ ...request, prompt: 'typed while loading', guidance: 5 });
  });
});

describe('umap geometry', () => {
  const bases = {
    extent: { x: [0, 10], y: [0, 5] },
    seeds: [0, 1],
    points: { x: [0], y: [0], prompt: [1], seed: [1], step: [0] },
    thumbnails: { file: 't.png', tile: 32, cols: 2, order: '', what: '' },
  } as unknown as UmapBases;
  it('fits the extent with one scale for both axes', () => {
    const f = fitFrame(bases.extent, 120, 120, 10);
    expect([f.px(0), f.px(10)]).toEqual([10, 110]);
    expect([f.py(0), f.py(5)]).toEqual([85, 35]); // y up, centred
  });
  it('finds the nearest point within a radius', () => {
    const pts = [
      { x: 0, y: 0 },
      { x: 5, y: 0 },
    ];
    expect(nearest(pts, 4, 0, 3)).toBe(pts[1]);
    expect(nearest(pts, 50, 0, 3)).toBeNull();
  });
  it('finds a reference run in the sprite (prompt-major, then seed)', () => {
    expect(spriteTile(bases, 0)).toEqual({ sx: 32, sy: 32, size: 32 });
  });
});
