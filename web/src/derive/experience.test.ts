import { describe, expect, it } from 'vitest';
import type { RequestMsg, StepMsg, TensorMsg, Trace } from '../lib/protocol';
import { droppedText, expectedImages, imagesIn, jobList, ranOn, runProgress, runState, settled, sideLabel, timesText } from './jobs';
import { tourFacts, tourIndex, tourStops } from './tour';

const img: TensorMsg = { dtype: 'uint8', shape: [1, 1, 4], data: new ArrayBuffer(4) };
const request: RequestMsg = { prompt: 'a cat', negativePrompt: '', seed: 3, guidance: 3, steps: 4, scheduler: 'ddim', previewEvery: 1 };
const step = (index: number, image: TensorMsg | null = null) =>
  ({ index, timestep: 900 - 200 * index, image, umap: null }) as unknown as StepMsg;
const trace = (over: Partial<Trace> = {}) =>
  ({
    runId: 1,
    request,
    steps: [],
    timesteps: [900, 700, 500, 300],
    done: false,
    cancelled: false,
    image: null,
    timingsMs: {},
    tokens: { length: 5, droppedWords: [] },
    schedulerLabel: 'DDIM',
    ...over,
  }) as unknown as Trace;
const model = {
  latent_channels: 4,
  latent_size: [16, 16] as [number, number],
  image_size: [64, 64] as [number, number],
  text_hidden_size: 128,
};

describe('jobs', () => {
  it('a run is settled only once its previews are decoded', () => {
    const running = trace({ steps: [step(0, img), step(1)] });
    expect(settled(running)).toBe(false);
    expect(runState(running)).toBe('running');
    expect(runProgress(running, 'running')).toBe('step 2 of 4');
    const decoding = trace({ done: true, steps: [step(0, img), step(1), step(2, img), step(3)] });
    expect(expectedImages(decoding)).toBe(4);
    expect(imagesIn(decoding)).toBe(2);
    expect(runState(decoding)).toBe('decoding');
    expect(runProgress(decoding, 'decoding')).toBe('decoding 2 of 4 previews');
    expect(runState(decoding, true)).toBe('done');
    const all = trace({ done: true, steps: [0, 1, 2, 3].map((i) => step(i, img)) });
    expect(settled(all)).toBe(true);
    expect(runState(all)).toBe('done');
    // previews in, but the worker is still on the run (CLIP's scores to come): views are still filling
    expect(runState(all, false, true)).toBe('decoding');
    expect(runProgress(all, 'decoding')).toBe('finishing');
    expect(settled(trace({ done: true, cancelled: true }))).toBe(true);
    expect(settled(null)).toBe(true);
    // no previews asked: done at run-done
    expect(settled(trace({ done: true, request: { ...request, previewEvery: 0 }, steps: [step(0)] }))).toBe(true);
    // every 2nd step and the last
    expect(expectedImages(trace({ request: { ...request, previewEvery: 2 }, steps: [0, 1, 2, 3].map((i) => step(i)) }))).toBe(3);
  });
  it('names side runs by their key', () => {
    expect(sideLabel('guidance:{"guidance":1}:{"prompt":"a"}')).toBe('Guidance row: scale 1');
    expect(sideLabel('seed:{"seed":42}:{}')).toBe('Seed 42');
    expect(sideLabel('compare:{"prompt":"a dog","seed":1}')).toBe('Compare: “a dog”');
    expect(sideLabel('sched:{"scheduler":"euler"}:{}')).toBe('Scheduler: euler');
  });
  it('lists the reader’s run, the running side run, the queue, then finished ones', () => {
    const main = trace({ done: true, steps: [0, 1, 2, 3].map((i) => step(i, img)) });
    const side = trace({ runId: 2, steps: [step(0)] });
    const old = trace({ runId: 3, done: true, steps: [step(0)] });
    const jobs = jobList({
      main,
      mainCut: false,
      queue: [{ key: 'seed:{"seed":5}:{}', request }],
      sideRuns: { 'seed:{"seed":4}:{}': side, 'seed:{"seed":9}:{}': old },
      sideRunning: 'seed:{"seed":4}:{}',
      recent: ['seed:{"seed":9}:{}', 'seed:{"seed":4}:{}'],
    });
    expect(jobs.map((j) => [j.label, j.state, j.progress])).toEqual([
      ['Your run', 'done', ''],
      ['Seed 4', 'running', 'step 1 of 4'],
      ['Seed 5', 'queued', ''],
      ['Seed 9', 'done', ''],
    ]);
  });
  it('says what a new run did to the side runs', () => {
    expect(droppedText(null)).toBeNull();
    expect(droppedText({ dropped: [], stopped: null })).toBeNull();
    expect(droppedText({ dropped: ['seed:{"seed":5}:{}', 'seed:{"seed":6}:{}'], stopped: 'guidance:{"guidance":1}:{}' })).toBe(
      'Your new run went first: it stopped Guidance row: scale 1 and dropped 2 queued side runs of the previous run; their views ask again for the new one.',
    );
  });
  it('labels the two times', () => {
    expect(timesText(4300, 2230)).toEqual({ wait: '4.30 s', model: '2.23 s' });
    expect(timesText(null, undefined)).toEqual({ wait: '–', model: '–' });
  });
});

describe('tour', () => {
  it('walks the pipeline in order', () => {
    const ids = tourStops(null, null).map((s) => s.id);
    expect(ids).toEqual([
      'prompt',
      'tokens',
      'text',
      'noise',
      'unet',
      'guidance',
      'scheduler',
      'x0',
      'decoder',
      'image',
      'seeds',
      'scale',
      'compare',
      'umap',
      'attention',
    ]);
  });
  it('quotes the run’s own values', () => {
    const t = trace({
      done: true,
      steps: [0, 1, 2, 3].map((i) => step(i, img)),
      timingsMs: { total: 2230 },
      request: { ...request, prompt: 'a red apple', seed: 7, guidance: 3 },
    });
    const stops = tourStops(tourFacts(t, 77, 1, null), model);
    const by = Object.fromEntries(stops.map((s) => [s.id, s.text]));
    expect(by.prompt).toContain('“a red apple”');
    expect(by.tokens).toContain('5 tokens');
    expect(by.text).toContain('77×128');
    expect(by.noise).toContain('4×16×16');
    expect(by.noise).toContain('seed 7');
    expect(by.unet).toContain('step 2 of 4 (timestep 700)');
    expect(by.guidance).toContain('ε_u + 3·(ε_c − ε_u)');
    expect(by.scheduler).toContain('DDIM');
    expect(by.scheduler).toContain('4 steps');
    expect(by.decoder).toContain('3×64×64');
    expect(by.image).toContain('2.23 s');
  });
  it('says PNDM’s extra UNet call', () => {
    const t = trace({ timesteps: [1, 2, 3, 4, 5], request: { ...request, steps: 4 }, schedulerLabel: 'PNDM' });
    const s = tourStops(tourFacts(t, 77, null, null), model).find((x) => x.id === 'scheduler')!;
    expect(s.text).toContain('4 steps, 5 UNet calls');
  });
  it('reads ?tour=N', () => {
    expect(tourIndex(null, 15)).toBeNull();
    expect(tourIndex('3', 15)).toBe(2);
    expect(tourIndex('99', 15)).toBe(14);
    expect(tourIndex('0', 15)).toBe(0);
  });
});

describe('ranOn', () => {
  it('keeps the provider part of the backend name', () => {
    expect(ranOn('onnxruntime-web 1.30.0 (WASM, 2 thread(s))')).toBe('WASM, 2 thread(s)');
    expect(ranOn('onnxruntime-web 1.30.0 (WebGPU)')).toBe('WebGPU');
    expect(ranOn('onnxruntime 1.32.0 native (CPUExecutionProvider)')).toBe('CPUExecutionProvider');
    expect(ranOn('something else')).toBe('something else');
  });
});

describe('previews (issue 24: a few evenly spaced x̂₀ decodes, the rest on demand)', () => {
  it('previewEvery gives about `previews` decodes', async () => {
    const { previewEveryFor, isPreviewed } = await import('./jobs');
    expect(previewEveryFor(25, 6)).toBe(5);
    expect(previewEveryFor(4, 6)).toBe(1);
    expect(previewEveryFor(25, 0)).toBe(1);
    expect(previewEveryFor(NaN, 6)).toBe(1);
    const shown = Array.from({ length: 25 }, (_, i) => i).filter((i) => isPreviewed(i, 25, 5));
    expect(shown).toEqual([0, 5, 10, 15, 20, 24]);
    expect(isPreviewed(3, 25, 0)).toBe(false);
  });
  it('the sentence counts what the runtime decodes', async () => {
    const { previewSentence } = await import('../text/explain');
    expect(previewSentence(5, 25)).toContain('every 5th step and the last (6 of 25)');
    expect(previewSentence(2, 9)).toContain('every 2nd step and the last (5 of 9)');
    expect(previewSentence(3, 7)).toContain('every 3rd step and the last (3 of 7)');
    expect(previewSentence(1, 25)).toBe('');
    expect(previewSentence(5, 26, true)).toContain('a replay has no model to decode them');
    expect(previewSentence(5, 26, true)).not.toContain('decoded when you show it');
  });
});
