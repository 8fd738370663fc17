import { describe, expect, it } from 'vitest';
import type { RequestMsg, Trace } from '../lib/protocol';
import { clusters, tracks } from '../styles/palette';
import { sideTracks } from './tracks';

/** sRGB hex → CIELAB (D65). */
function lab(hex: string): [number, number, number] {
  const c = [1, 3, 5]
    .map((i) => parseInt(hex.slice(i, i + 2), 16) / 255)
    .map((v) => (v > 0.04045 ? ((v + 0.055) / 1.055) ** 2.4 : v / 12.92));
  const [r, g, b] = c;
  const xyz = [
    (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047,
    0.2126 * r + 0.7152 * g + 0.0722 * b,
    (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883,
  ];
  const [fx, fy, fz] = xyz.map((t) => (t > 0.008856 ? Math.cbrt(t) : 7.787 * t + 16 / 116));
  return [116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)];
}
const deltaE = (a: string, b: string) => Math.hypot(...lab(a).map((v, i) => v - lab(b)[i]));

describe('track colours', () => {
  it('are far from every reference cluster colour (ΔE ≥ 40)', () => {
    for (const t of [tracks.run, tracks.compare, ...tracks.side]) {
      const nearest = Math.min(...clusters.map((c) => deltaE(t, c)));
      expect(nearest, t).toBeGreaterThanOrEqual(40);
    }
  });
  it('differ from each other', () => {
    const all = [tracks.run, tracks.compare, ...tracks.side];
    for (let i = 0; i < all.length; i++) for (let j = i + 1; j < all.length; j++) expect(deltaE(all[i], all[j])).toBeGreaterThan(30);
  });
});

describe('sideTracks', () => {
  const req: RequestMsg = { prompt: 'a cat', negativePrompt: '', seed: 1, guidance: 3, steps: 4, scheduler: 'ddim', previewEvery: 1 };
  const run = (over: Partial<RequestMsg>, placed = true) =>
    ({ request: { ...req, ...over }, steps: [{ umap: placed ? [0, 0] : null }] }) as unknown as Trace;
  const current = run({});
  it('keeps runs that vary one thing, labelled and coloured in turn', () => {
    const side = {
      'seed:b': run({ seed: 2 }),
      'guidance:a': run({ guidance: 7.5 }),
      'other:prompt': run({ prompt: 'a dog' }),
      'seed:two-things': run({ seed: 3, guidance: 1 }),
      'seed:unplaced': run({ seed: 4 }, false),
    };
    const got = sideTracks(side, current, ['#000', '#111']);
    expect(got.map((t) => [t.label, t.colour])).toEqual([
      ['scale 7.5', '#000'],
      ['seed 2', '#111'],
    ]);
    expect(sideTracks(side, current, ['#000'], [side['guidance:a']]).map((t) => t.label)).toEqual(['seed 2']);
    expect(sideTracks(side, null, ['#000'])).toEqual([]);
  });
});
