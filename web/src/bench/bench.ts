// The bench view's logic (no UI): read ?bench parameters, drive the engine through a benchmark,
// and turn its raw samples into the result that the view shows and that `bench/page.py` reads
// from `window.__dxBench`.
//
// The engine is the app's own EngineClient (state/engine.svelte.ts): the same worker, 'init'
// message, loader and provider choice as the explainer, so the bench loads the bundle exactly as
// the app does; `bench: true` adds the worker's memory records, `EngineClient.bench()` the runs.
import type { BenchOptions, BenchResourceBytes, BenchResourceEntry, EngineInfo, ProviderChoice, WorkerBenchResult } from '../lib/protocol';
import { wholeIn } from '../derive/limits';
import type { EngineClient } from '../state/engine.svelte';

declare global {
  interface Window {
    /** The bench view's result, once final (ok or not): read by bench/page.py. */
    __dxBench?: BenchResult;
  }
}

export const BENCH_SCHEMA = 'diffusion-explainer-bench/1';
export const DEFAULT_PROMPT = 'a cat on a blue background';

export interface BenchParams {
  bundleUrl: string;
  provider: ProviderChoice;
  /** 0: automatic, as in the app. */
  threads: number;
  options: BenchOptions;
}

/** ?bench&provider=…&threads=…&steps=…&repeats=…&prompt=…&seed=…&guidance=…&scheduler=…&bundle=… */
export function parseBenchParams(params: URLSearchParams, defaultBundle: string): { params: BenchParams; errors: string[] } {
  const errors: string[] = [];
  const int = (name: string, fallback: number, lo: number, hi: number) => {
    const raw = params.get(name);
    if (raw === null || raw === '') return fallback;
    const v = Number(raw);
    if (!Number.isInteger(v) || v < lo || v > hi) {
      errors.push(`${name} must be a whole number from ${lo} to ${hi} (got “${raw}”)`);
      return fallback;
    }
    return v;
  };
  const provider = params.get('provider') ?? 'auto';
  if (!['auto', 'webgpu', 'wasm'].includes(provider)) errors.push(`provider must be auto, webgpu or wasm (got “${provider}”)`);
  // checked against the runtime's list once the engine is ready (checkScheduler)
  const scheduler = params.get('scheduler') ?? '';
  // guidance and seed: their ranges and defaults are the runtime's (checkRequest, once it is ready)
  const number = (name: string, whole: boolean): number => {
    const raw = params.get(name);
    if (raw === null || raw === '') return NaN; // the runtime's default
    const v = Number(raw);
    if (!Number.isFinite(v) || (whole && !Number.isInteger(v)))
      errors.push(`${name} must be a ${whole ? 'whole ' : ''}number (got “${raw}”)`);
    return v;
  };
  return {
    params: {
      bundleUrl: params.get('bundle') || defaultBundle,
      provider: (['auto', 'webgpu', 'wasm'].includes(provider) ? provider : 'auto') as ProviderChoice,
      threads: int('threads', 0, 0, 16),
      options: {
        prompt: params.get('prompt') ?? DEFAULT_PROMPT,
        seed: number('seed', true),
        guidance: number('guidance', false),
        steps: orDefault(number('steps', true), BENCH_STEPS),
        repeats: int('repeats', 3, 1, 50),
        scheduler,
      },
    },
    errors,
  };
}

const orDefault = (v: number, d: number) => (Number.isNaN(v) ? d : v);

/** The bench's own run length (short: it times steps, not pictures), unless ?steps= says otherwise. */
export const BENCH_STEPS = 10;

/** The request fields against the runtime's limits (EngineInfo.request), the unset ones filled with
 * its defaults: the options to run, or the reader's error. */
export function checkRequest(options: BenchOptions, info: EngineInfo): { options: BenchOptions; error: string | null } {
  const { limits, defaults } = info.request;
  const out = {
    ...options,
    seed: Number.isNaN(options.seed) ? defaults.seed : options.seed,
    guidance: Number.isNaN(options.guidance) ? defaults.guidance : options.guidance,
  };
  const errors: string[] = [];
  if (!wholeIn(out.seed, limits.seed))
    errors.push(`seed must be a whole number from ${limits.seed.min} to ${limits.seed.max} (got “${out.seed}”)`);
  if (!wholeIn(out.steps, limits.steps))
    errors.push(`steps must be a whole number from ${limits.steps.min} to ${limits.steps.max} (got “${out.steps}”)`);
  if (!(out.guidance >= limits.guidance.min && out.guidance <= limits.guidance.max)) {
    errors.push(`guidance must be a number from ${limits.guidance.min} to ${limits.guidance.max} (got “${out.guidance}”)`);
  }
  return { options: out, error: errors.length ? errors.join('; ') : null };
}

/** The ?scheduler= check, against the schedulers the runtime offers: an error, or null. */
export function checkScheduler(scheduler: string, info: EngineInfo): string | null {
  const names = info.bundle.schedulers.map((s) => s.name);
  return scheduler && !names.includes(scheduler) ? `scheduler must be one of ${names.join(', ')} (got “${scheduler}”)` : null;
}

/** The query string that opens the bench (or, with bench=false, the app) with these settings. */
export function benchQuery(
  p: { provider: ProviderChoice; threads: number; bundle?: string | null; steps?: number; repeats?: number; prompt?: string },
  bench = true,
): string {
  const q = new URLSearchParams();
  if (p.bundle) q.set('bundle', p.bundle);
  q.set('provider', p.provider);
  if (p.threads) q.set('threads', String(p.threads));
  if (bench) {
    if (p.steps) q.set('steps', String(p.steps));
    if (p.repeats) q.set('repeats', String(p.repeats));
    if (p.prompt && p.prompt !== DEFAULT_PROMPT) q.set('prompt', p.prompt);
  }
  const rest = q.toString();
  return bench ? `?bench${rest ? '&' + rest : ''}` : `?${rest}`;
}

export function median(xs: number[]): number | null {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

export type ResourceKind = 'app' | 'pyodide' | 'ort' | 'bundle';

export function resourceKind(url: string, base: string, bundleUrl: string): ResourceKind {
  if (bundleUrl && url.startsWith(bundleUrl)) return 'bundle';
  if (url.startsWith(`${base}pyodide/`)) return 'pyodide';
  if (url.startsWith(`${base}ort/`)) return 'ort';
  return 'app';
}

/** Body bytes that came over the network, per kind, from Resource Timing entries (0 for a cache
 * hit or a 304). Files read from the Cache API do not appear here at all. */
export function resourceBytes(entries: BenchResourceEntry[], base: string, bundleUrl: string): BenchResourceBytes {
  const bytes: Record<string, number> = { app: 0, pyodide: 0, ort: 0, bundle: 0 };
  const decoded: Record<string, number> = { app: 0, pyodide: 0, ort: 0, bundle: 0 };
  const count: Record<string, number> = { app: 0, pyodide: 0, ort: 0, bundle: 0 };
  for (const e of entries) {
    const fromNetwork = !(e.transferSize === 0 || e.status === 304);
    const k = resourceKind(e.url, base, bundleUrl);
    bytes[k] += fromNetwork ? e.encodedBodySize : 0;
    decoded[k] += fromNetwork ? (e.decodedBodySize ?? e.encodedBodySize) : 0;
    count[k] += 1;
  }
  return { bytes, decoded, count };
}

/** This context's own Resource Timing entries (the main thread's; the worker sends its own). */
export function ownResourceEntries(): BenchResourceEntry[] {
  return (performance.getEntriesByType('resource') as (PerformanceResourceTiming & { responseStatus?: number })[]).map((e) => ({
    url: e.name,
    transferSize: e.transferSize,
    encodedBodySize: e.encodedBodySize,
    decodedBodySize: e.decodedBodySize,
    status: e.responseStatus ?? null,
  }));
}

export interface PageMemory {
  /** performance.measureUserAgentSpecificMemory(): the page and its workers, now (not a peak). */
  bytes: number | null;
  byScope: Record<string, number>;
  note: string;
}

/** The browser's own measurement of the page's memory, where it offers one (Chromium, isolated).
 * With WASM threads Chromium has not answered in our runs (ORT's thread workers sit in
 * Atomics.wait), so `threaded` shortens the wait and says so. */
export async function measurePageMemory(threaded = false): Promise<PageMemory> {
  const timeoutMs = threaded ? 10_000 : 30_000;
  type Breakdown = { bytes: number; attribution: { scope?: string }[]; types: string[] };
  const perf = performance as Performance & { measureUserAgentSpecificMemory?: () => Promise<{ bytes: number; breakdown: Breakdown[] }> };
  if (!globalThis.crossOriginIsolated) return { bytes: null, byScope: {}, note: 'not measurable: the page is not cross-origin isolated' };
  if (typeof perf.measureUserAgentSpecificMemory !== 'function') {
    return { bytes: null, byScope: {}, note: 'not measurable: this browser has no performance.measureUserAgentSpecificMemory()' };
  }
  try {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<null>((r) => (timer = setTimeout(() => r(null), timeoutMs)));
    const res = await Promise.race([perf.measureUserAgentSpecificMemory(), timeout]);
    clearTimeout(timer);
    if (!res) {
      const why = threaded ? ' (with WASM threads it may never answer: onnxruntime’s thread workers wait in Atomics.wait)' : '';
      return { bytes: null, byScope: {}, note: `not measured: the browser did not answer within ${timeoutMs / 1000} s${why}` };
    }
    const byScope: Record<string, number> = {};
    for (const b of res.breakdown) {
      const scope = b.attribution[0]?.scope ?? (b.types.length ? b.types.join('+') : 'shared');
      byScope[scope] = (byScope[scope] ?? 0) + b.bytes;
    }
    return { bytes: res.bytes, byScope, note: 'the browser’s measurement at the end of the bench (current, not a peak)' };
  } catch (e) {
    return { bytes: null, byScope: {}, note: `not measurable: ${(e as Error).message}` };
  }
}

/** Everything the view shows, as JSON with snake_case keys (read by bench/page.py). */
export interface BenchResult {
  schema: string;
  ok: boolean;
  error: string | null;
  params: Record<string, unknown>;
  /** The scheduler that ran (the bundle's default unless ?scheduler= named one); PNDM runs steps + 1. */
  scheduler: string | null;
  engine: Record<string, unknown> | null;
  bundle: Record<string, unknown> | null;
  startup_ms: Record<string, unknown> | null;
  startup_bytes: Record<string, unknown> | null;
  steps_per_run: number;
  timesteps_per_run: number;
  calls_per_run: Record<string, number>;
  measured_runs: number;
  /** (a) medians through the Python controller (runtime/web.py → Pipeline.generate). */
  controller_ms: Record<string, number | null>;
  /** (b) medians of session.run called from JS on the same feeds. */
  raw_ms: Record<string, number | null>;
  /** (a) − (b): what the controller and Pyodide's FFI add. */
  overhead_ms: Record<string, number | null>;
  /** (a′) medians of the same session.run as JS timed it inside the controller's runs. */
  session_in_controller_ms: Record<string, number | null>;
  /** (a) − (a′): the Python side of each call (feeds to JS, awaiting the promise, wrapping outputs). */
  ffi_ms: Record<string, number | null>;
  /** Per step through the controller with the explainer's views off (plain loop) and on, until run-done. */
  views_ms: { step_off: number | null; step_on: number | null; ratio: number | null; wall_off: number | null; wall_on: number | null };
  memory: Record<string, unknown>;
  page_resources: BenchResourceBytes | null;
  page_ms: { ready: number | null; done: number | null };
  /** Worker start → ready, plus the first (warm-up) generation: the engine's first finished image. */
  first_image_ms: number | null;
  /** Every run, warm-ups included (flagged): controller runs' Trace timings and raw session.run times. */
  /** Caveats a reader needs to read the figures right. */
  notes: string[];
  samples: {
    controller: {
      warmup: boolean;
      timings_ms: Record<string, number>;
      js_wall_ms: number;
      steps: Record<string, number>[];
      session_run_ms: Record<string, number[]>;
    }[];
    raw: { warmup: boolean; runs_ms: Record<string, number[]> }[];
  } | null;
}

export function emptyResult(params: BenchParams, error: string | null): BenchResult {
  return {
    schema: BENCH_SCHEMA,
    ok: error === null,
    error,
    params: {
      provider: params.provider,
      threads: params.threads,
      steps: params.options.steps,
      repeats: params.options.repeats,
      prompt: params.options.prompt,
      seed: params.options.seed,
      guidance: params.options.guidance,
      scheduler: params.options.scheduler || null,
      bundle_url: params.bundleUrl,
    },
    scheduler: params.options.scheduler || null,
    engine: null,
    bundle: null,
    startup_ms: null,
    startup_bytes: null,
    steps_per_run: 0,
    timesteps_per_run: 0,
    calls_per_run: {},
    measured_runs: 0,
    controller_ms: {},
    raw_ms: {},
    overhead_ms: {},
    session_in_controller_ms: {},
    ffi_ms: {},
    views_ms: { step_off: null, step_on: null, ratio: null, wall_off: null, wall_on: null },
    memory: { notes: ['not measured'] },
    notes: [],
    page_resources: null,
    page_ms: { ready: null, done: null },
    first_image_ms: null,
    samples: null,
  };
}

function startup(info: EngineInfo) {
  const sessions = info.timingsMs.sessions;
  return {
    startup_ms: {
      pyodide: info.timingsMs.pyodide,
      runtime_zip: info.timingsMs.runtime,
      bundle: info.timingsMs.bundle,
      sessions: { ...sessions },
      sessions_total: Object.values(sessions).reduce((a, b) => a + b, 0),
      ready: info.timingsMs.total,
    },
    startup_bytes: {
      bundle_total: info.bundle.bytes,
      bundle_downloaded: info.downloadedBytes,
      bundle_from_cache: info.downloadedBytes === 0,
    },
  };
}

export function summarize(
  params: BenchParams,
  info: EngineInfo,
  w: WorkerBenchResult,
  memory: PageMemory,
  resources: BenchResourceBytes,
  pageMs: { ready: number | null; done: number | null },
): BenchResult {
  const runs = w.controller.filter((r) => !r.warmup);
  const steps = runs.flatMap((r) => r.steps);
  const passes = w.raw.filter((p) => !p.warmup);
  const rawOf = (name: string) => median(passes.flatMap((p) => p.runsMs[name] ?? []));
  const controller_ms = {
    text_encoder: median(runs.map((r) => r.timingsMs.text_encoder)),
    unet_step: median(steps.map((s) => s.unet)),
    ops_step: median(steps.map((s) => s.ops ?? 0)),
    other_step: median(steps.map((s) => s.total - s.unet - (s.ops ?? 0))),
    step_total: median(steps.map((s) => s.total)),
    vae_decode: median(runs.map((r) => r.timingsMs.vae_decoder)),
    generate_total: median(runs.map((r) => r.timingsMs.total)),
    generate_wall: median(runs.map((r) => r.jsWallMs)),
  };
  const onRuns = (w.viewsOn ?? []).filter((r) => !r.warmup);
  const stepOn = median(onRuns.flatMap((r) => r.steps).map((s) => s.total));
  const views_ms = {
    step_off: controller_ms.step_total,
    step_on: stepOn,
    ratio: stepOn != null && controller_ms.step_total ? stepOn / controller_ms.step_total : null,
    wall_off: controller_ms.generate_wall,
    wall_on: median(onRuns.map((r) => r.jsWallMs)),
  };
  const raw_ms = { text_encoder: rawOf('text_encoder'), unet_step: rawOf('unet'), vae_decode: rawOf('vae_decoder') };
  const innerOf = (name: string) => median(runs.flatMap((r) => r.sessionRunMs[name] ?? []));
  const session_in_controller_ms = {
    text_encoder: innerOf('text_encoder'),
    unet_step: innerOf('unet'),
    vae_decode: innerOf('vae_decoder'),
  };
  const diff = (x: Record<string, number | null>, y: Record<string, number | null>) =>
    Object.fromEntries(Object.keys(y).map((k) => [k, x[k] == null || y[k] == null ? null : x[k]! - y[k]!]));
  const overhead_ms = diff(controller_ms, raw_ms);
  const ffi_ms = diff(controller_ms, session_in_controller_ms);
  const wasm: Record<string, number> = {};
  for (const m of w.wasmMemories) wasm[m.owner] = (wasm[m.owner] ?? 0) + m.bytes;
  const wasmTotal = Object.values(wasm).reduce((a, b) => a + b, 0);
  const notes = [
    w.wasmMemories.length
      ? 'wasm_bytes: WebAssembly memories of the engine worker at the end; they never shrink, so this is their peak'
      : 'wasm_bytes: not measurable: no WebAssembly memory was seen being created',
    `user_agent_specific_bytes: ${memory.note}`,
  ];
  if (info.provider === 'webgpu') notes.push('GPU memory (WebGPU buffers) is not measurable from a page');
  const result: BenchResult = {
    ...emptyResult(params, null),
    scheduler: params.options.scheduler || info.bundle.defaultScheduler,
    engine: {
      provider: info.provider,
      reason: info.reason,
      threads: info.threads,
      cross_origin_isolated: info.crossOriginIsolated,
      adapter: info.adapter,
      adapter_software: info.adapterSoftware ?? null,
      ort_version: info.ortVersion,
      python_version: info.pythonVersion,
      backend: w.backend,
      hardware_concurrency: navigator.hardwareConcurrency ?? null,
      user_agent: navigator.userAgent,
    },
    bundle: {
      name: info.bundle.name,
      url: info.bundle.url,
      bytes: info.bundle.bytes,
      image_size: info.bundle.imageSize,
      latent_size: info.bundle.latentSize,
      precision: info.bundle.precision,
      default_scheduler: info.bundle.defaultScheduler,
    },
    ...startup(info),
    steps_per_run: runs[0]?.steps.length ?? 0,
    timesteps_per_run: w.timestepsPerRun,
    calls_per_run: w.callsPerRun,
    measured_runs: runs.length,
    controller_ms,
    raw_ms,
    overhead_ms,
    session_in_controller_ms,
    ffi_ms,
    views_ms,
    memory: {
      wasm_bytes: w.wasmMemories.length ? { ...wasm, total: wasmTotal } : null,
      wasm_memories: w.wasmMemories,
      user_agent_specific_bytes: memory.bytes,
      user_agent_specific_by_scope: memory.byScope,
      notes,
    },
    page_resources: resources,
    first_image_ms: w.controller[0] ? info.timingsMs.total + w.controller[0].jsWallMs : null,
    notes: [
      ...(info.provider === 'webgpu'
        ? [
            'WebGPU: session.run resolves once the work is queued and outputs stay on the GPU, so GPU time shows up where results are read back (the rest of a step); raw passes feed CPU tensors and do not wait for the GPU',
          ]
        : []),
      ...(info.adapterSoftware ? ['the WebGPU adapter is a software one (e.g. SwiftShader): these times say nothing about a GPU'] : []),
      ...(runs.length < 3 ? ['fewer than 3 measured runs: medians are rough'] : []),
    ],
    page_ms: pageMs,
    samples: {
      controller: w.controller.map((r) => ({
        warmup: r.warmup,
        timings_ms: r.timingsMs,
        js_wall_ms: r.jsWallMs,
        steps: r.steps,
        session_run_ms: r.sessionRunMs,
      })),
      raw: w.raw.map((p) => ({ warmup: p.warmup, runs_ms: p.runsMs })),
    },
  };
  return result;
}

/** Start `engine` as the app does (plus the bench's memory records), wait until it is ready, run the
 * benchmark and summarize it. `measured` gets the figures as soon as the timings are in; the
 * browser's memory measurement (up to 30 s) then completes the result. Throws with the reason. */
export async function runBench(engine: EngineClient, params: BenchParams, measured: (partial: BenchResult) => void): Promise<BenchResult> {
  const base = new URL(import.meta.env.BASE_URL, location.href).href;
  engine.start({ bundleUrl: params.bundleUrl, provider: params.provider, threads: params.threads, bench: true });
  const info = await engine.whenReady();
  const readyMs = performance.now();
  const bad = checkScheduler(params.options.scheduler, info);
  if (bad) throw new Error(bad);
  const checked = checkRequest(params.options, info);
  if (checked.error) throw new Error(checked.error);
  params.options = checked.options; // the result reports the request that ran
  const w: WorkerBenchResult = await engine.bench(params.options);
  const resources = resourceBytes([...ownResourceEntries(), ...w.resources], base, info.bundle.url);
  const pageMs = { ready: readyMs, done: performance.now() };
  measured(summarize(params, info, w, { bytes: null, byScope: {}, note: 'being measured' }, resources, pageMs));
  const memory = await measurePageMemory(info.provider === 'wasm' && info.threads > 1);
  return summarize(params, info, w, memory, resources, pageMs);
}
