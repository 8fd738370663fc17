import { zipSync } from 'fflate';
import { describe, expect, it } from 'vitest';
import { decodeFloat16, encodeFloat16, floatToHalf, halfToFloat } from '../derive/float16';
import { downsampleRgba, frameSize, resizeNearest } from '../derive/image';
import { replayLine, replayNotes } from '../text/replay';
import { decodePng, encodePng } from './png';
import type { RequestInfo, Trace } from './protocol';
import { pageMachine, readTraceFile, runFileName, TraceFileError, writeTraceFile, type TraceBundle } from './tracefile';

describe('float16', () => {
  it('encodes known values (ties to even, overflow to inf, subnormals)', () => {
    expect(floatToHalf(1)).toBe(0x3c00);
    expect(floatToHalf(-2)).toBe(0xc000);
    expect(floatToHalf(65504)).toBe(0x7bff);
    expect(floatToHalf(65520)).toBe(0x7c00);
    expect(floatToHalf(1e9)).toBe(0x7c00);
    expect(floatToHalf(-Infinity)).toBe(0xfc00);
    expect(floatToHalf(2 ** -24)).toBe(0x0001);
    expect(floatToHalf(2 ** -26)).toBe(0x0000);
    expect(floatToHalf(1 / 3)).toBe(0x3555);
    expect(floatToHalf(1 + 2 ** -11)).toBe(0x3c00); // a tie: to even
    expect(floatToHalf(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(Number.isNaN(halfToFloat(floatToHalf(NaN)))).toBe(true);
  });
  it('round-trips every half exactly and floats within half a unit', () => {
    for (let h = 0; h < 65536; h++) {
      const v = halfToFloat(h);
      if (!Number.isNaN(v)) expect(floatToHalf(v)).toBe(h);
    }
    const xs = new Float32Array([0.1, -3.14159, 7.5, 1e-5, 1234.5678]);
    const back = decodeFloat16(encodeFloat16(xs));
    xs.forEach((x, i) => expect(Math.abs(back[i] - x)).toBeLessThanOrEqual(Math.abs(x) * 2 ** -11 + 2 ** -25));
  });
});

describe('images', () => {
  const img = (w: number, h: number) => ({ data: Uint8Array.from({ length: w * h * 4 }, (_, i) => (i * 7) % 256), width: w, height: h });
  it('downsamples by a whole factor with box averages, not below the limit', () => {
    expect(downsampleRgba(img(64, 64), 128).width).toBe(64);
    const d = downsampleRgba(img(512, 512), 128);
    expect([d.width, d.height]).toEqual([128, 128]);
    const two = { data: new Uint8Array([0, 0, 0, 255, 10, 20, 32, 255, 0, 0, 0, 255, 10, 20, 30, 255]), width: 2, height: 2 };
    expect(Array.from(downsampleRgba(two, 1).data)).toEqual([5, 10, 16, 255]); // 62 / 4 = 15.5 → 16 (half up)
    expect(downsampleRgba(img(300, 200), 128).width).toBe(100);
  });
  it('resizes frames crisply', () => {
    expect(frameSize([64])).toBe(256);
    expect(frameSize([128, 512])).toBe(512);
    expect(frameSize([100])).toBe(300);
    const r = resizeNearest({ data: new Uint8Array([1, 2, 3, 4]), width: 1, height: 1 }, 2, 2);
    expect(Array.from(r.data)).toEqual([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]);
  });
  it('writes and reads PNGs', () => {
    const a = img(5, 3);
    const back = decodePng(encodePng(a));
    expect([back.width, back.height]).toEqual([5, 3]);
    expect(Array.from(back.data)).toEqual(Array.from(a.data));
    expect(() => decodePng(new Uint8Array([1, 2, 3]))).toThrow('not a PNG');
  });
});

const tensor = (shape: number[], f: (i: number) => number) => ({
  dtype: 'float32' as const,
  shape,
  data: Float32Array.from({ length: shape.reduce((a, d) => a * d, 1) }, (_, i) => f(i)).buffer,
});
const image = (n: number) => ({
  dtype: 'uint8' as const,
  shape: [n, n, 4],
  data: Uint8Array.from({ length: n * n * 4 }, (_, i) => i % 251).buffer,
});
const requestInfo: RequestInfo = {
  limits: { seed: { min: 0, max: 4294967295 }, steps: { min: 1, max: 100 }, guidance: { min: 0, max: 20 }, promptChars: { max: 5000 } },
  defaults: { prompt: 'a cat', negativePrompt: '', seed: 0, guidance: 7.5, steps: 25, scheduler: 'ddim', previewEvery: 1 },
};
const bundle = {
  name: 'tiny',
  imageSize: [8, 8],
  latentSize: [2, 2],
  model: { latent_channels: 4 },
  randomWeights: false,
} as unknown as TraceBundle;
const tokens = { ids: [1, 5, 2], tokens: ['<|startoftext|>', 'cat</w>', '<|endoftext|>'], length: 3, truncated: false, droppedWords: [] };
function run(side = 8): Trace {
  const step = (index: number) => ({
    index,
    timestep: 900 - 300 * index,
    coefficients: { alpha: 0.5 },
    update: [[0.9, 'x_t'] as [number, string]],
    x0Update: [],
    latent: tensor([1, 4, 2, 2], (i) => i / 7 - index),
    noiseUncond: tensor([1, 4, 2, 2], (i) => -i / 3),
    noiseCond: tensor([1, 4, 2, 2], (i) => i / 3),
    noiseGuided: tensor([1, 4, 2, 2], (i) => i),
    predX0: tensor([1, 4, 2, 2], (i) => i * 0.01),
    image: image(side),
    timingsMs: { unet: 3 },
    umap: [0.5, -1] as [number, number],
    attention: null,
  });
  return {
    runId: 4,
    request: { ...requestInfo.defaults, prompt: 'a <b>cat</b>', seed: 7, guidance: 3, steps: 2 },
    tokens,
    negativeTokens: tokens,
    timesteps: [900, 600],
    schedulerLabel: 'DDIM',
    schedulerConfig: {},
    alphasCumprod: [0.99, 0.5, 0.01],
    sigmas: null,
    initNoiseSigma: 1,
    tokenKnown: null,
    negativeTokenKnown: null,
    steps: [step(0), step(1)],
    embeddings: tensor([2, 3, 4], (i) => Math.sin(i)),
    finalLatent: tensor([1, 4, 2, 2], (i) => i),
    image: image(side),
    timingsMs: { total: 10 },
    backend: 'test',
    cancelled: false,
    done: true,
  };
}
const opts = { source: 'page' as const, machine: 'Linux x86_64 · Chrome 140', producer: 'test', bundle, requestInfo };

describe('trace file', () => {
  it('round-trips a run: numbers, float16 tensors, images byte for byte', async () => {
    const t = run();
    const file = writeTraceFile(t, opts);
    const back = await readTraceFile(file);
    expect(back.meta.machine).toBe(opts.machine);
    expect(back.trace.request).toEqual(t.request);
    expect(back.trace.timesteps).toEqual([900, 600]);
    expect(back.trace.steps[1].coefficients).toEqual({ alpha: 0.5 });
    expect(new Uint8Array(back.trace.image!.data)).toEqual(new Uint8Array(t.image!.data));
    const a = new Float32Array(t.steps[1].latent.data);
    const b = new Float32Array(back.trace.steps[1].latent.data);
    a.forEach((x, i) => expect(Math.abs(b[i] - x)).toBeLessThan(1e-2));
    expect(back.info.bundle.name).toBe('tiny');
    expect(back.info.request.limits.steps.max).toBe(100);
  });
  it('stores big previews downsampled and the final image full size', async () => {
    const back = await readTraceFile(writeTraceFile(run(256), opts));
    expect(back.trace.steps[0].image!.shape).toEqual([128, 128, 4]);
    expect(back.trace.image!.shape).toEqual([256, 256, 4]);
  });
  it('refuses malformed files in one line naming what is wrong', async () => {
    const good = writeTraceFile(run(), opts);
    const bad = async (bytes: Uint8Array) => {
      const e = await readTraceFile(bytes).then(
        () => null,
        (err) => err,
      );
      expect(e).toBeInstanceOf(TraceFileError);
      expect(e.message).not.toContain('\n');
      return e.message as string;
    };
    expect(await bad(new TextEncoder().encode('<script>alert(1)</script>'))).toContain('is not a trace file');
    expect(await bad(good.slice(0, 200))).toContain('zip');
    expect(await bad(zipSync({ 'x.txt': new Uint8Array(3) }))).toContain('not in the file');
    expect(await bad(zipSync({ 'trace.json': new TextEncoder().encode('{nope') }))).toContain('not valid JSON');
    const json = (doc: unknown) => zipSync({ 'trace.json': new TextEncoder().encode(JSON.stringify(doc)) });
    expect(await bad(json({ format: 'other' }))).toContain('is not a diffusion-explainer-trace file');
    expect(await bad(json({ format: 'diffusion-explainer-trace', version: 9 }))).toContain('version 9');
    expect(await bad(json({ format: 'diffusion-explainer-trace', version: 1, plan: {} }))).toBe('trace.json: plan.request is missing');
    // a tensor whose bytes do not match its shape
    const doc = JSON.parse(new TextDecoder().decode((await import('fflate')).unzipSync(good)['trace.json']));
    doc.steps[0].latent.shape = [1, 4, 8, 8];
    const files = (await import('fflate')).unzipSync(good);
    files['trace.json'] = new TextEncoder().encode(JSON.stringify(doc));
    expect(await bad(zipSync(files))).toMatch(/^trace\.json: steps\[0\]\.latent .* needs 512$/);
    doc.steps[0].latent.shape = [1e9, 1e9];
    files['trace.json'] = new TextEncoder().encode(JSON.stringify(doc));
    expect(await bad(zipSync(files))).toContain('is not a shape');
  });
  it('names the machine, the file and the replay', () => {
    expect(
      pageMachine(
        { userAgent: 'Mozilla/5.0 (X11; Linux x86_64) Chrome/140.0.0.0 Safari/537.36', platform: 'Linux x86_64', hardwareConcurrency: 8 },
        { provider: 'wasm', threads: 4, adapter: null },
      ),
    ).toBe('Linux x86_64 · Chrome 140 · 8 CPUs · WASM, 4 threads');
    expect(runFileName({ request: { ...requestInfo.defaults, prompt: 'A red apple, on blue!', seed: 3 } }, '.png')).toBe(
      'a-red-apple-on-blue-seed3.png',
    );
    expect(replayLine({ source: 'native', machine: 'Linux x86_64', synthetic: false })).toBe('Replay of a native run on Linux x86_64');
    expect(replayLine({ source: 'synthetic', machine: 'x', synthetic: true })).toContain('Synthetic');
    expect(replayLine({ source: 'native', machine: 'x', synthetic: false, bundle: { randomWeights: true } })).toContain(
      'weights are random',
    );
    expect(replayNotes({ synthetic: false, bundle: { ...bundle, randomWeights: true } }).join(' ')).toContain('weights are random');
  });
});
