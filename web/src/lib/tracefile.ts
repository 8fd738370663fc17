// The trace file (.dxtrace) in the page: open one (a native run from `diffusion-explainer generate
// --trace run.dxtrace`, or a page run saved here) and write the page's own runs in the same format.
// The format is runtime/tracefile.py's (its docstring is the reference): a zip holding trace.json
// (the worker's messages: plan, steps, run, plus where the run happened) and every tensor as a
// member file: float32 as little-endian float16, images as PNG, other dtypes raw.
// Reading never trusts the file: sizes are checked before anything is unpacked, and every problem
// is one line (TraceFileError) naming the field or member; nothing from the file becomes HTML.
import { unzipSync, zipSync, type UnzipFileInfo, type Zippable } from 'fflate';
import { decodeFloat16, encodeFloat16 } from '../derive/float16';
import { downsampleRgba, rgbaOf } from '../derive/image';
import { decodePng, encodePng, PngError } from './png';
import type { DType, EngineInfo, RequestInfo, StepMsg, TensorMsg, Trace } from './protocol';

export const TRACE_FORMAT = 'diffusion-explainer-trace';
export const TRACE_VERSION = 1;
export const TRACE_SUFFIX = '.dxtrace';
/** A step's preview is stored at most this many pixels a side; the final image full size. */
export const PREVIEW_MAX = 128;
const MAX_ENTRIES = 10_000;
const MAX_MEMBER_BYTES = 256 * 2 ** 20;
const MAX_TOTAL_BYTES = 2 * 2 ** 30;
const MAX_DIMS = 6;
const MAX_DIM = 1 << 16;
const ITEMSIZE: Record<DType, number> = { float32: 4, uint8: 1, int64: 8, int32: 4 };

export type TraceSource = 'native' | 'page' | 'synthetic';

/** The bundle a trace was made with, as EngineInfo.bundle says it (without a URL), plus whether its weights are random. */
export type TraceBundle = Omit<EngineInfo['bundle'], 'url'> & { randomWeights: boolean };

/** trace.json's fields besides the run itself. */
export interface TraceMeta {
  format: string;
  version: number;
  created: string;
  producer: string;
  source: TraceSource;
  /** Where the run happened, in a line ("Linux x86_64 · AMD EPYC · 2 CPUs"). */
  machine: string;
  /** Random tensors made by a test, not a model's output. */
  synthetic: boolean;
  bundle: TraceBundle;
  /** The runtime's request limits and defaults (Request.describe) when the run was made. */
  requestInfo: RequestInfo;
  previewMax: number;
}

export interface OpenedTrace {
  meta: TraceMeta;
  /** The run as the views read it (runId is the engine's to give). */
  trace: Omit<Trace, 'runId'>;
  /** An EngineInfo for the views: the file's bundle and request limits; no provider ran here. */
  info: EngineInfo;
  /** The file's size in bytes. */
  bytes: number;
}

export class TraceFileError extends Error {}

const fail = (where: string, what: string): never => {
  throw new TraceFileError(`${where} ${what}`);
};

type Kind = 'string' | 'number' | 'boolean' | 'object' | 'array' | 'numbers';
const KIND_WORDS: Record<Kind, string> = {
  string: 'text',
  number: 'a number',
  boolean: 'true or false',
  object: 'an object',
  array: 'a list',
  numbers: 'a list of numbers',
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function ok(v: unknown, kind: Kind): boolean {
  if (kind === 'object') return isObject(v);
  if (kind === 'array') return Array.isArray(v);
  if (kind === 'numbers') return Array.isArray(v) && v.every((x) => typeof x === 'number');
  return typeof v === kind;
}

/** obj[key] checked to be of `kind`; a missing (or null) value fails unless optional. */
function need<T>(obj: unknown, key: string, kind: Kind, where: string, optional = false): T {
  if (!isObject(obj)) return fail(where, 'is not an object');
  const v = obj[key];
  if (v === undefined || v === null) return optional ? (null as T) : fail(`${where}.${key}`, 'is missing');
  if (!ok(v, kind)) return fail(`${where}.${key}`, `must be ${KIND_WORDS[kind]}`);
  return v as T;
}

const isRef = (v: unknown): v is Record<string, unknown> => isObject(v) && typeof v.file === 'string' && 'encoding' in v;
const isTensor = (v: unknown): v is TensorMsg => isObject(v) && v.data instanceof ArrayBuffer && Array.isArray(v.shape);
const pause = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** Open a .dxtrace file's bytes. Yields to the page between members so that a big file (SD 1.5
 * size) does not freeze it; throws a TraceFileError with one line naming what is wrong. */
export async function readTraceFile(bytes: Uint8Array, label = 'the trace file'): Promise<OpenedTrace> {
  if (bytes.length < 4 || bytes[0] !== 0x50 || bytes[1] !== 0x4b || bytes[2] !== 3 || bytes[3] !== 4)
    fail(label, 'is not a trace file: a .dxtrace is a zip archive holding trace.json');
  const infos = new Map<string, UnzipFileInfo>();
  try {
    unzipSync(bytes, { filter: (f) => (infos.set(f.name, f), false) });
  } catch (e) {
    fail(label, `is not a readable zip archive (${(e as Error).message})`);
  }
  if (infos.size > MAX_ENTRIES) fail(label, `holds ${infos.size} files; a trace has at most ${MAX_ENTRIES}`);
  const total = [...infos.values()].reduce((a, f) => a + f.originalSize, 0);
  if (total > MAX_TOTAL_BYTES) fail(label, `unpacks to ${total} bytes, more than ${MAX_TOTAL_BYTES}`);

  let last = performance.now();
  const member = async (name: string, where: string, most = MAX_MEMBER_BYTES): Promise<Uint8Array> => {
    const info = infos.get(name);
    if (!info) return fail(where, `names ${JSON.stringify(name)}, which is not in the file`);
    if (info.originalSize > most) fail(where, `(${name}) is ${info.originalSize} bytes, more than the ${most} it can be`);
    if (performance.now() - last > 25) {
      await pause();
      last = performance.now();
    }
    try {
      const out = unzipSync(bytes, { filter: (f) => f.name === name })[name];
      if (!out) return fail(label, `: ${name} could not be unpacked`);
      if (out.length > most) fail(where, `(${name}) unpacks to ${out.length} bytes, more than the ${most} it can be`);
      return out;
    } catch (e) {
      if (e instanceof TraceFileError) throw e;
      return fail(`${label}:`, `${name} is damaged (${(e as Error).message})`);
    }
  };

  const tensor = async (ref: unknown, where: string): Promise<TensorMsg | null> => {
    if (ref === null || ref === undefined) return null;
    const file = need<string>(ref, 'file', 'string', where);
    const dtype = need<string>(ref, 'dtype', 'string', where) as DType;
    const shape = need<number[]>(ref, 'shape', 'numbers', where);
    const encoding = need<string>(ref, 'encoding', 'string', where);
    if (!(dtype in ITEMSIZE)) fail(`${where}.dtype`, `${JSON.stringify(dtype)} is not one of ${Object.keys(ITEMSIZE).join(', ')}`);
    if (!(shape.length > 0 && shape.length <= MAX_DIMS && shape.every((d) => Number.isInteger(d) && d > 0 && d <= MAX_DIM)))
      fail(`${where}.shape`, `${JSON.stringify(shape)} is not a shape (1–${MAX_DIMS} whole numbers from 1 to ${MAX_DIM})`);
    const n = shape.reduce((a, d) => a * d, 1);
    if (encoding === 'png') {
      if (dtype !== 'uint8' || shape.length !== 3 || shape[2] !== 4) fail(where, 'is a PNG but not uint8 [H, W, 4]');
      let img;
      try {
        img = decodePng(await member(file, where));
      } catch (e) {
        if (e instanceof PngError) return fail(`${label}: ${file}`, e.message);
        throw e;
      }
      if (img.height !== shape[0] || img.width !== shape[1])
        fail(where, `says ${JSON.stringify(shape)}, its PNG is ${img.height}×${img.width}`);
      return { dtype: 'uint8', shape, data: img.data.buffer as ArrayBuffer };
    }
    if (encoding === 'float16') {
      if (dtype !== 'float32') fail(where, 'is float16 but not a float32 tensor');
      const data = await member(file, where, n * 2);
      if (data.length !== n * 2)
        fail(where, `(${file}) has ${data.length} bytes; shape ${JSON.stringify(shape)} in float16 needs ${n * 2}`);
      return { dtype, shape, data: decodeFloat16(data).buffer as ArrayBuffer };
    }
    if (encoding !== 'raw') fail(`${where}.encoding`, `${JSON.stringify(encoding)} is not float16, png or raw`);
    const size = n * ITEMSIZE[dtype];
    const data = await member(file, where, size);
    if (data.length !== size) fail(where, `(${file}) has ${data.length} bytes; shape ${JSON.stringify(shape)} of ${dtype} needs ${size}`);
    return { dtype, shape, data: data.slice().buffer as ArrayBuffer };
  };

  /** Every tensor reference in an object (one level) replaced by its tensor. */
  const withTensors = async <T>(obj: Record<string, unknown>, where: string): Promise<T> => {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(obj)) out[k] = isRef(v) ? await tensor(v, `${where}.${k}`) : v;
    return out as T;
  };

  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(await member('trace.json', `${label}: trace.json`)));
  } catch (e) {
    if (e instanceof TraceFileError) throw e;
    fail(`${label}: trace.json`, `is not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(doc) || doc.format !== TRACE_FORMAT) return fail(`${label}: trace.json`, `is not a ${TRACE_FORMAT} file`);
  const version = need<number>(doc, 'version', 'number', 'trace.json');
  if (!Number.isInteger(version)) fail('trace.json: version', 'must be a whole number');
  if (version > TRACE_VERSION)
    fail(label, `is format version ${version}; this page reads up to ${TRACE_VERSION} (it was made by a newer diffusion-explainer)`);

  const plan = need<Record<string, unknown>>(doc, 'plan', 'object', 'trace.json');
  const req = need<Record<string, unknown>>(plan, 'request', 'object', 'trace.json: plan');
  need(req, 'prompt', 'string', 'trace.json: plan.request');
  need(req, 'seed', 'number', 'trace.json: plan.request');
  need(req, 'guidance', 'number', 'trace.json: plan.request');
  need(req, 'steps', 'number', 'trace.json: plan.request');
  need(req, 'scheduler', 'string', 'trace.json: plan.request');
  for (const key of ['tokens', 'negativeTokens']) {
    const tok = need(plan, key, 'object', 'trace.json: plan');
    need(tok, 'ids', 'numbers', `trace.json: plan.${key}`);
    const words = need<unknown[]>(tok, 'tokens', 'array', `trace.json: plan.${key}`);
    if (!words.every((w) => typeof w === 'string')) fail(`trace.json: plan.${key}.tokens`, 'must be a list of text');
  }
  need(plan, 'timesteps', 'numbers', 'trace.json: plan');
  need(plan, 'alphasCumprod', 'numbers', 'trace.json: plan');
  need(plan, 'schedulerLabel', 'string', 'trace.json: plan');
  need(plan, 'sigmas', 'numbers', 'trace.json: plan', true);

  const rawSteps = need<unknown[]>(doc, 'steps', 'array', 'trace.json');
  const steps: StepMsg[] = [];
  for (const [i, s] of rawSteps.entries()) {
    const where = `trace.json: steps[${i}]`;
    need(s, 'index', 'number', where);
    need(s, 'timestep', 'number', where);
    for (const key of ['latent', 'noiseUncond', 'noiseCond', 'noiseGuided']) need(s, key, 'object', where);
    const step = await withTensors<StepMsg>(s as Record<string, unknown>, where);
    steps.push({ ...STEP_DEFAULTS, ...step });
  }
  const run = await withTensors<Record<string, unknown>>(need(doc, 'run', 'object', 'trace.json'), 'trace.json: run');
  const bundle = need<TraceBundle>(doc, 'bundle', 'object', 'trace.json');
  need(bundle, 'imageSize', 'numbers', 'trace.json: bundle');
  need(bundle, 'latentSize', 'numbers', 'trace.json: bundle');
  need(bundle, 'model', 'object', 'trace.json: bundle');
  const requestInfo = need<RequestInfo>(doc, 'requestInfo', 'object', 'trace.json');
  need(requestInfo, 'limits', 'object', 'trace.json: requestInfo');
  need(requestInfo, 'defaults', 'object', 'trace.json: requestInfo');
  const source = doc.source === 'page' || doc.source === 'synthetic' ? doc.source : 'native';
  const meta: TraceMeta = {
    format: TRACE_FORMAT,
    version,
    created: typeof doc.created === 'string' ? doc.created : '',
    producer: typeof doc.producer === 'string' ? doc.producer : '',
    source,
    machine: typeof doc.machine === 'string' && doc.machine ? doc.machine : 'an unknown machine',
    synthetic: doc.synthetic === true || source === 'synthetic',
    bundle: { ...bundle, randomWeights: bundle.randomWeights === true },
    requestInfo,
    previewMax: typeof doc.previewMax === 'number' ? doc.previewMax : PREVIEW_MAX,
  };
  const trace: Omit<Trace, 'runId'> = {
    ...(plan as unknown as Omit<Trace, 'runId'>),
    steps,
    embeddings: (run.embeddings as TensorMsg) ?? null,
    finalLatent: (run.finalLatent as TensorMsg) ?? null,
    image: (run.image as TensorMsg) ?? null,
    timingsMs: isObject(run.timingsMs) ? (run.timingsMs as Record<string, number>) : {},
    backend: typeof run.backend === 'string' ? run.backend : '',
    cancelled: run.cancelled === true,
    clip: isObject(doc.clip) ? (doc.clip as unknown as Trace['clip']) : null,
    done: true,
  };
  return { meta, trace, info: replayInfo(meta), bytes: bytes.length };
}

// what an older or smaller file may leave out
const STEP_DEFAULTS: Partial<StepMsg> = {
  coefficients: {},
  update: [],
  x0Update: [],
  timingsMs: {},
  umap: null,
  attention: null,
  predX0: null,
  image: null,
};
const BUNDLE_DEFAULTS: Partial<EngineInfo['bundle']> = {
  schedulers: [],
  defaultScheduler: '',
  vocabulary: {},
  previewBudget: 0,
  previews: 0,
  hasClip: false,
  bytes: 0,
  precision: [],
  description: '',
  examples: [],
};

/** An EngineInfo for a replay: the file's bundle and limits; no provider, no start-up. */
function replayInfo(meta: TraceMeta): EngineInfo {
  return {
    provider: 'wasm',
    reason: `replay: no model loaded (the run was made on ${meta.machine})`,
    threads: 0,
    crossOriginIsolated: globalThis.crossOriginIsolated ?? false,
    adapter: null,
    ortVersion: '',
    pythonVersion: '',
    pythonSnapshot: 'fresh',
    bundle: { ...BUNDLE_DEFAULTS, ...meta.bundle, url: '' } as EngineInfo['bundle'],
    request: meta.requestInfo,
    timingsMs: { pyodide: 0, runtime: 0, bundle: 0, sessions: {}, total: 0 },
    downloadedBytes: 0,
    loadedUrls: [],
  };
}

/** Where a page run happens, in a line: OS and CPU architecture, browser, CPU count, provider. */
export function pageMachine(
  nav: { userAgent: string; platform?: string; hardwareConcurrency?: number },
  info: Pick<EngineInfo, 'provider' | 'threads' | 'adapter'> | null,
): string {
  const ua = nav.userAgent;
  const browser = /Firefox\/(\d+)/.exec(ua)
    ? `Firefox ${/Firefox\/(\d+)/.exec(ua)![1]}`
    : /Edg\/(\d+)/.exec(ua)
      ? `Edge ${/Edg\/(\d+)/.exec(ua)![1]}`
      : /Chrom(?:e|ium)\/(\d+)/.exec(ua)
        ? `Chrome ${/Chrom(?:e|ium)\/(\d+)/.exec(ua)![1]}`
        : /Version\/(\d+).*Safari/.exec(ua)
          ? `Safari ${/Version\/(\d+).*Safari/.exec(ua)![1]}`
          : 'a browser';
  const runtime = !info
    ? ''
    : info.provider === 'webgpu'
      ? `WebGPU${info.adapter ? ` (${info.adapter})` : ''}`
      : `WASM, ${info.threads} threads`;
  const cpus = nav.hardwareConcurrency ? `${nav.hardwareConcurrency} CPUs` : '';
  return [nav.platform || '', browser, cpus, runtime].filter(Boolean).join(' · ');
}

export interface WriteOptions {
  source: TraceSource;
  machine: string;
  producer: string;
  bundle: TraceBundle;
  requestInfo: RequestInfo;
  synthetic?: boolean;
  created?: Date;
}

/** A page run (or a replayed one) as a .dxtrace file's bytes: the same format the CLI writes. */
export function writeTraceFile(trace: Trace, opts: WriteOptions): Uint8Array {
  const files: Zippable = {};
  const rows = trace.tokens.tokens.length;
  const store = (t: TensorMsg, name: string, preview: boolean): Record<string, unknown> => {
    if (name.endsWith('/attention') && t.shape.length === 3 && rows > 0 && rows < t.shape[0]) {
      // the prompt's positions only (the attention view offers no padding), as runtime/tracefile.py writes it
      const [, h, w] = t.shape;
      const kept = { ...t, shape: [rows, h, w], data: t.data.slice(0, rows * h * w * 4) };
      return { ...store(kept, name, false), fullShape: t.shape };
    }
    if (t.dtype === 'uint8' && t.shape.length === 3 && t.shape[2] === 4) {
      const full = rgbaOf(t);
      const img = preview ? downsampleRgba(full, PREVIEW_MAX) : full;
      files[`${name}.png`] = [encodePng(img), { level: 0 }];
      const ref: Record<string, unknown> = { file: `${name}.png`, dtype: 'uint8', shape: [img.height, img.width, 4], encoding: 'png' };
      if (img !== full) ref.fullShape = t.shape;
      return ref;
    }
    if (t.dtype === 'float32') {
      files[`${name}.f16`] = [encodeFloat16(new Float32Array(t.data)), { level: 6 }];
      return { file: `${name}.f16`, dtype: t.dtype, shape: t.shape, encoding: 'float16' };
    }
    files[`${name}.${t.dtype}`] = [new Uint8Array(t.data.slice(0)), { level: 6 }];
    return { file: `${name}.${t.dtype}`, dtype: t.dtype, shape: t.shape, encoding: 'raw' };
  };
  const refs = (obj: object, prefix: string, preview = false) =>
    Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, isTensor(v) ? store(v, `${prefix}/${k}`, preview) : v]));

  const { runId: _r, steps, done: _d, clip, embeddings, finalLatent, image, timingsMs, backend, cancelled, ...plan } = trace;
  const doc = {
    format: TRACE_FORMAT,
    version: TRACE_VERSION,
    created: (opts.created ?? new Date()).toISOString().replace(/\.\d+Z$/, 'Z'),
    producer: opts.producer,
    source: opts.source,
    machine: opts.machine,
    synthetic: !!opts.synthetic,
    bundle: opts.bundle,
    requestInfo: opts.requestInfo,
    plan,
    steps: steps.map((s) => refs(s, `steps/${String(s.index).padStart(3, '0')}`, true)),
    run: refs({ embeddings, finalLatent, image, timingsMs, backend, cancelled }, 'run'),
    clip: clip ?? null,
    previewMax: PREVIEW_MAX,
  };
  files['trace.json'] = [new TextEncoder().encode(JSON.stringify(doc)), { level: 6 }];
  return zipSync(files, { mtime: new Date(1980, 0, 1) });
}

/** A file name for a run's downloads: the prompt's first words and the seed. */
export function runFileName(trace: Pick<Trace, 'request'>, ext: string): string {
  const words = trace.request.prompt
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 40)
    .replace(/-+$/, '');
  return `${words || 'run'}-seed${trace.request.seed}${ext}`;
}

/** ?trace=… as an address to fetch: http(s) only (relative to the page), or why not in one line. */
export function traceAddress(raw: string, base: string): { url: string } | { error: string } {
  let url: URL;
  try {
    url = new URL(raw, base);
  } catch {
    return { error: `the trace address ${JSON.stringify(raw.slice(0, 200))} is not a valid address` };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    return { error: `the trace address must be http(s), not ${JSON.stringify(url.protocol.slice(0, 40))}` };
  return { url: url.href };
}
