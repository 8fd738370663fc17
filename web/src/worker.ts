// The engine worker: Pyodide runs the pure-Python controller (runtime/, shipped as runtime.zip),
// which drives onnxruntime-web through runtime/web.py. Everything heavy lives here so the page
// stays responsive; the page only renders the Trace messages this worker posts.
import type { PyodideAPI } from 'pyodide';
import type { PyProxy } from 'pyodide/ffi';
import { BundleLoadError, fetchManifest, loadBundleFiles, type Manifest } from './lib/bundleLoader';
import type {
  BenchControllerRun, BenchOptions, BenchRawPass, BenchResourceEntry, BenchWasmMemory, EngineInfo, FromWorker, InitMsg, Provider, RequestMsg, ToWorker,
} from './lib/protocol';

declare const self: DedicatedWorkerGlobalScope;

const BASE = new URL(import.meta.env.BASE_URL, self.location.origin).href;

function post(msg: FromWorker, transfer: Transferable[] = []) {
  self.postMessage(msg, transfer);
}

let engine: PyProxy | null = null;
/** The ORT module the sessions were made with (the bench view makes its own tensors with it). */
let ortModule: { Tensor: new (type: 'float32', data: Float32Array, dims: readonly number[]) => unknown } | null = null;
let initStarted = false;
let busy = false;
let stopView: Int32Array | null = null;
let stopRequested = false;

const isStopped = () => (stopView ? Atomics.load(stopView, 0) === 1 : stopRequested);
// Without a shared stop flag the 'stop' message can only land between macrotasks.
const yieldToEvents = () => new Promise<void>((r) => setTimeout(r, 0));

self.onmessage = (e: MessageEvent<ToWorker>) => {
  const msg = e.data;
  if (msg.type === 'init') {
    if (initStarted) return;
    initStarted = true;
    init(msg).catch((err) => post({ type: 'fatal', text: describeError(err) }));
  } else if (msg.type === 'generate') {
    generate(msg.runId, msg.request);
  } else if (msg.type === 'bench') {
    bench(msg.options);
  } else if (msg.type === 'stop') {
    stopRequested = true;
    if (stopView) Atomics.store(stopView, 0, 1);
  }
};

/** One line a reader can act on, from a JS error or a Python traceback. */
function describeError(err: unknown): string {
  if (err instanceof BundleLoadError) return err.message;
  const text = err instanceof Error ? err.message : String(err);
  const lines = text.trim().split('\n').filter((l) => l.trim());
  const last = lines[lines.length - 1] ?? text;
  if (/bad_alloc|out of memory|Array buffer allocation failed|Aborted\(OOM\)/i.test(text)) {
    return 'the browser ran out of memory running this model: WebAssembly can address at most 4 GB, and this bundle’s ' +
      'weights and working memory need more. Use a smaller build (int8, int4) or a smaller model, or WebGPU if this ' +
      `machine has a GPU. (${last.replace(/^.*ERROR_MESSAGE: /, '')})`;
  }
  // "runtime.bundle.BundleError: msg" → "BundleError: msg"; ValueError text as is.
  return last.replace(/^[\w.]*\.(\w+Error): /, '$1: ').replace(/^(ValueError|BundleError): /, '');
}

class ProviderError extends Error {}

async function chooseProvider(choice: InitMsg['provider'], needsF16: boolean) {
  type Adapter = { features: Set<string>; info?: { vendor?: string; architecture?: string; description?: string; isFallbackAdapter?: boolean } };
  const gpu = (self.navigator as unknown as { gpu?: { requestAdapter(o?: object): Promise<Adapter | null> } }).gpu;
  let adapter: Adapter | null = null;
  let why = '';
  if (choice !== 'wasm') {
    if (!gpu) why = 'this browser offers no WebGPU (navigator.gpu is missing)';
    else {
      try {
        adapter = await gpu.requestAdapter();
      } catch (e) {
        why = `requesting a WebGPU adapter failed (${(e as Error).message})`;
      }
      if (!adapter && !why) why = 'no WebGPU adapter is available (requestAdapter() returned null)';
      if (adapter && needsF16 && !adapter.features.has('shader-f16')) {
        why = "the WebGPU adapter lacks the 'shader-f16' feature that this bundle's fp16 models need";
        adapter = null;
      }
    }
  }
  const info = adapter?.info;
  const name = info ? [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unnamed adapter' : null;
  const software = !!info && (info.isFallbackAdapter === true || /swiftshader|llvmpipe|software/i.test(name ?? ''));
  if (choice === 'wasm') return { provider: 'wasm' as Provider, reason: 'WASM on the CPU, as chosen in the settings', adapter: null, software: null };
  if (choice === 'webgpu') {
    if (!adapter) throw new ProviderError(`WebGPU was chosen, but ${why}. Choose “auto” or “WASM” in the settings.`);
    return { provider: 'webgpu' as Provider, reason: `WebGPU, as chosen in the settings (adapter: ${name}${software ? ', software' : ''})`, adapter, software };
  }
  if (adapter && !software) return { provider: 'webgpu' as Provider, reason: `WebGPU: a GPU adapter is available (${name})`, adapter, software };
  if (adapter) return { provider: 'wasm' as Provider, reason: `WASM on the CPU: the only WebGPU adapter is a software one (${name}), slower than WASM`, adapter: null, software: null };
  return { provider: 'wasm' as Provider, reason: `WASM on the CPU: ${why}`, adapter: null, software: null };
}

async function startPython(): Promise<{ py: PyodideAPI; pyodideMs: number; runtimeMs: number; web: PyProxy }> {
  post({ type: 'status', phase: 'pyodide', text: 'starting Python (Pyodide)…' });
  let t = performance.now();
  const { loadPyodide } = (await import(/* @vite-ignore */ `${BASE}pyodide/pyodide.mjs`)) as typeof import('pyodide');
  const py = await loadPyodide({ indexURL: `${BASE}pyodide/`, stdout: (s) => console.log(s), stderr: (s) => console.warn(s) });
  const pyodideMs = performance.now() - t;
  t = performance.now();
  const res = await fetch(`${BASE}runtime/runtime.zip`, { cache: 'no-cache' });
  if (!res.ok) throw new Error(`the page's runtime.zip is missing (HTTP ${res.status}); rebuild the page (npm run build)`);
  py.unpackArchive(await res.arrayBuffer(), 'zip', { extractDir: '/home/pyodide/app' });
  py.runPython("import sys\nif '/home/pyodide/app' not in sys.path: sys.path.insert(0, '/home/pyodide/app')");
  const web = py.pyimport('runtime.web') as PyProxy;
  return { py, pyodideMs, runtimeMs: performance.now() - t, web };
}

async function loadOrt(provider: Provider, threads: number, adapter: unknown) {
  // The JSEP build carries the WebGPU kernels (28 MB wasm); the WASM-only build is half that.
  const ort = provider === 'webgpu' ? await import('onnxruntime-web') : await import('onnxruntime-web/wasm');
  ort.env.wasm.wasmPaths = `${BASE}ort/`;
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = 'error';
  if (provider === 'webgpu' && adapter) (ort.env.webgpu as { adapter?: unknown }).adapter = adapter;
  return ort;
}

async function init(msg: InitMsg) {
  const t0 = performance.now();
  stopView = msg.stopFlag ? new Int32Array(msg.stopFlag) : null;
  const bundleUrl = new URL(msg.bundleUrl, self.location.href).href;
  if (msg.bench) watchWasmMemories();

  post({ type: 'status', phase: 'bundle', text: 'reading the bundle manifest…' });
  const python = startPython(); // in parallel with the downloads: it is CPU-bound, they are not
  python.catch(() => {}); // reported below, once awaited
  let tBundle = performance.now();
  const { manifest, text } = await fetchManifest(bundleUrl);
  const precision = [...new Set(Object.values(manifest.components).map((c) => c.precision ?? 'fp32'))];
  const choice = await chooseProvider(msg.provider, precision.includes('fp16'));
  const isolated = self.crossOriginIsolated;
  const autoThreads = Math.max(1, Math.min(self.navigator.hardwareConcurrency || 1, 4));
  const threads = choice.provider === 'webgpu' ? 1 : isolated ? msg.threads || autoThreads : 1;
  if (!isolated && choice.provider === 'wasm') {
    post({ type: 'notice', level: 'warning', text: 'the page is not cross-origin isolated (no COOP/COEP headers), so WASM runs on one thread' });
  }

  post({ type: 'status', phase: 'bundle', text: `downloading the bundle “${manifest.name ?? 'bundle'}”…` });
  const bundle = await loadBundleFiles(bundleUrl, manifest, text, {
    progress: (file, loaded, total, fromCache) => post({ type: 'progress', file, loaded, total, fromCache }),
    notice: (t) => post({ type: 'notice', level: 'warning', text: t }),
  });
  const bundleMs = performance.now() - tBundle;
  const ort = await loadOrt(choice.provider, threads, choice.adapter);
  ortModule = ort;
  const { py, pyodideMs, runtimeMs, web } = await python;
  wasmOwner = 'onnxruntime'; // Pyodide's memory exists by now; ORT instantiates its wasm at the first session

  post({ type: 'status', phase: 'sessions', text: 'creating onnxruntime-web sessions…' });
  const create = web.Engine as unknown as (...a: unknown[]) => PyProxy;
  engine = create(bundle.manifestText, bundle.files, ort, choice.provider, bundleUrl);
  const sessions = (await (engine.load as (cb: unknown) => Promise<Record<string, number>>)(
    (name: string, i: number, n: number) => post({ type: 'status', phase: 'sessions', text: `creating session ${i + 1}/${n}: ${name}…` }),
  )) as Record<string, number>;

  const info: EngineInfo = {
    provider: choice.provider,
    reason: choice.reason,
    threads,
    crossOriginIsolated: isolated,
    adapter: choice.adapter ? describeAdapter(choice.adapter) : null,
    adapterSoftware: choice.software,
    ortVersion: ort.env.versions.web ?? '?',
    pythonVersion: py.runPython('import sys; sys.version.split()[0]') as string,
    bundle: {
      name: manifest.name ?? 'bundle',
      url: bundleUrl,
      imageSize: manifest.model.image_size,
      latentSize: manifest.model.latent_size,
      defaultScheduler: manifest.scheduler.default as EngineInfo['bundle']['defaultScheduler'],
      bytes: bundle.totalBytes,
      precision,
      description: manifest.about?.description ?? '',
      examples: manifest.about?.examples ?? [],
      guidance: typeof manifest.about?.guidance === 'number' ? manifest.about.guidance : null,
    },
    timingsMs: { pyodide: pyodideMs, runtime: runtimeMs, bundle: bundleMs, sessions, total: performance.now() - t0 },
    downloadedBytes: bundle.downloadedBytes,
  };
  post({ type: 'status', phase: 'ready', text: 'ready' });
  post({ type: 'ready', info });
}

function describeAdapter(a: unknown): string {
  const info = (a as { info?: { vendor?: string; architecture?: string; description?: string } }).info;
  return [info?.vendor, info?.architecture, info?.description].filter(Boolean).join(' ') || 'unnamed adapter';
}

async function generate(runId: number, request: RequestMsg) {
  if (!engine) return post({ type: 'run-error', runId, text: 'the engine is not ready yet' });
  if (busy) return post({ type: 'run-error', runId, text: 'a run is already going on; stop it first' });
  busy = true;
  stopRequested = false; // the shared flag is cleared by the page before it sends 'generate'
  try {
    // runtime/web.py posts run-start / run-step / run-done (or run-invalid) itself.
    await (engine.generate as (...a: unknown[]) => Promise<void>)(runId, request, post, isStopped, stopView ? undefined : yieldToEvents);
  } catch (err) {
    post({ type: 'run-error', runId, text: describeError(err) });
  } finally {
    busy = false;
  }
}

export type { Manifest };

// ---- the bench view (?bench) -----------------------------------------------------------------------
// Two levels of timing, so a reader can see what limits speed: (a) the app's own path — Python's
// Engine.generate in runtime/web.py, whose Trace records each component's time — and (b) the same
// ORT sessions called straight from JS with the very feeds (a) gave them, no Pyodide in between.
// (a) − (b) is what the controller and the FFI cost.

type OrtSession = { run(feeds: Record<string, unknown>): Promise<Record<string, { dispose?(): void }>> };
type OrtTensorLike = { type: string; dims: readonly number[]; getData(): Promise<ArrayLike<unknown> & { slice(): unknown }> };
type Feeds = Record<string, { type: string; dims: number[]; data: unknown }>;

const BENCH_COMPONENTS = ['text_encoder', 'unet', 'vae_decoder'] as const;
const wasmMemories: { owner: string; memory: WebAssembly.Memory }[] = [];
let wasmOwner = 'pyodide';
let watching = false;

/** Record every WebAssembly.Memory created in this worker (made in JS, or exported by an instance).
 * A wasm memory only grows, so its size at the end is its peak. */
function watchWasmMemories() {
  if (watching) return;
  watching = true;
  const W = WebAssembly as unknown as Record<string, unknown>;
  const OrigMemory = WebAssembly.Memory;
  const record = (m: unknown) => {
    if (m instanceof OrigMemory && !wasmMemories.some((e) => e.memory === m)) wasmMemories.push({ owner: wasmOwner, memory: m });
  };
  const fromInstance = (inst: unknown) => {
    const exports = (inst as WebAssembly.Instance | undefined)?.exports;
    if (exports) for (const v of Object.values(exports)) record(v);
  };
  W.Memory = new Proxy(OrigMemory, {
    construct(target, args, newTarget) {
      const m = Reflect.construct(target, args, newTarget);
      record(m);
      return m;
    },
  });
  W.Instance = new Proxy(WebAssembly.Instance, {
    construct(target, args, newTarget) {
      const inst = Reflect.construct(target, args, newTarget);
      fromInstance(inst);
      return inst;
    },
  });
  const instantiate = WebAssembly.instantiate as (...a: unknown[]) => Promise<unknown>;
  W.instantiate = async (...a: unknown[]) => {
    const r = await instantiate.apply(WebAssembly, a);
    fromInstance(r instanceof WebAssembly.Instance ? r : (r as { instance: unknown }).instance);
    return r;
  };
  const streaming = WebAssembly.instantiateStreaming as ((...a: unknown[]) => Promise<{ instance: unknown }>) | undefined;
  if (streaming) {
    W.instantiateStreaming = async (...a: unknown[]) => {
      const r = await streaming.apply(WebAssembly, a);
      fromInstance(r.instance);
      return r;
    };
  }
}

function wasmMemoryFigures(): BenchWasmMemory[] {
  return wasmMemories.map(({ owner, memory }) => {
    const buf = memory.buffer;
    return { owner, bytes: buf.byteLength, shared: typeof SharedArrayBuffer !== 'undefined' && buf instanceof SharedArrayBuffer };
  });
}

/** What this worker fetched (Pyodide, ORT's wasm, runtime.zip, bundle files not in the Cache API). */
function resourceEntries(): BenchResourceEntry[] {
  return (performance.getEntriesByType('resource') as (PerformanceResourceTiming & { responseStatus?: number })[]).map((e) => ({
    url: e.name, transferSize: e.transferSize, encodedBodySize: e.encodedBodySize, status: e.responseStatus ?? null,
  }));
}

/** The JS InferenceSession that runtime/web.py's backend holds for a component. */
function sessionOf(name: string): OrtSession {
  const backend = engine!.backend as PyProxy;
  const sessions = backend.sessions as PyProxy;
  try {
    const s = (sessions.get as (k: string) => unknown)(name);
    if (!s) throw new Error(`the engine has no ${name} session`);
    return s as OrtSession;
  } finally {
    sessions.destroy();
    backend.destroy();
  }
}

async function snapshot(feeds: Record<string, unknown>): Promise<Feeds> {
  const out: Feeds = {};
  for (const [k, v] of Object.entries(feeds)) {
    const t = v as OrtTensorLike;
    out[k] = { type: t.type, dims: Array.from(t.dims), data: (await t.getData()).slice() }; // a GPU tensor is downloaded
  }
  return out;
}

function disposeAll(out: Record<string, { dispose?(): void }>) {
  for (const t of Object.values(out)) {
    try {
      t.dispose?.();
    } catch {
      /* already gone */
    }
  }
}

async function controllerRun(runId: number, options: BenchOptions, warmup: boolean): Promise<Omit<BenchControllerRun, 'sessionRunMs'> & { timesteps: number; backend: string }> {
  const steps: Record<string, number>[] = [];
  let done: Extract<FromWorker, { type: 'run-done' }> | null = null;
  let refused = '';
  const collect = (m: FromWorker) => {
    if (m.type === 'run-step') steps.push({ ...m.step.timingsMs });
    else if (m.type === 'run-done') done = m;
    else if (m.type === 'run-invalid') refused = m.text;
  };
  const request: RequestMsg = {
    prompt: options.prompt, negativePrompt: '', seed: options.seed, guidance: options.guidance, steps: options.steps,
    scheduler: options.scheduler, previewEvery: 0,
  };
  const t = performance.now();
  await (engine!.generate as (...a: unknown[]) => Promise<void>)(runId, request, collect, () => false);
  const jsWallMs = performance.now() - t;
  if (refused) throw new Error(`the bench request was refused: ${refused}`);
  const d = done as Extract<FromWorker, { type: 'run-done' }> | null;
  if (!d) throw new Error('the controller finished without a run-done message');
  return { warmup, timingsMs: { ...d.timingsMs }, jsWallMs, steps, timesteps: d.timesteps.length, backend: d.backend };
}

async function bench(options: BenchOptions) {
  if (!engine || !ortModule) return post({ type: 'bench-error', text: 'the engine is not ready yet' });
  if (busy) return post({ type: 'bench-error', text: 'a run is already going on' });
  busy = true;
  const ort = ortModule;
  const total = 2 * (options.repeats + 1);
  let done = 0;
  const progress = (text: string) => post({ type: 'bench-progress', text, done, total });
  let sessions: Record<string, OrtSession>;
  try {
    sessions = Object.fromEntries(BENCH_COMPONENTS.map((n) => [n, sessionOf(n)]));
  } catch (err) {
    busy = false;
    return post({ type: 'bench-error', text: describeError(err) });
  }
  // While the controller runs, each model session's run is wrapped (an own property shadows the
  // prototype's): it times session.run as JS sees it inside the app's path and, in the warm-up run,
  // records the feeds for the raw passes. The snapshot is taken outside the timed span.
  const captured: { name: string; feeds: Feeds }[] = [];
  let capture = false;
  let sessionRunMs: Record<string, number[]> = {};
  for (const [name, s] of Object.entries(sessions)) {
    const original = s.run;
    (s as { run: OrtSession['run'] }).run = async function (this: OrtSession, feeds) {
      if (capture) captured.push({ name, feeds: await snapshot(feeds) });
      const t = performance.now();
      try {
        return await original.call(this, feeds);
      } finally {
        (sessionRunMs[name] ??= []).push(performance.now() - t);
      }
    };
  }
  try {
    const controller: BenchControllerRun[] = [];
    const raw: BenchRawPass[] = [];
    let timesteps = 0;
    let backend = '';
    // Interleaved — controller run r, then raw pass r — so both levels see the same state of the
    // machine (V8 tiers wasm up in the background for seconds; other load comes and goes).
    for (let r = 0; r <= options.repeats; r++) {
      const warmup = r === 0;
      // (a) through the Python controller
      progress(warmup ? 'warm-up run through the Python controller…' : `run ${r} of ${options.repeats} through the Python controller…`);
      capture = warmup;
      sessionRunMs = {};
      const run = await controllerRun(-1 - r, options, warmup);
      capture = false;
      timesteps = run.timesteps;
      backend = run.backend;
      controller.push({ warmup, timingsMs: run.timingsMs, jsWallMs: run.jsWallMs, steps: run.steps, sessionRunMs });
      done++;
      // (b) raw onnxruntime-web from JS: the same sessions and feeds, no Pyodide
      progress(warmup ? 'warm-up pass of raw onnxruntime-web session.run…' : `raw onnxruntime-web pass ${r} of ${options.repeats}…`);
      const runsMs: Record<string, number[]> = {};
      for (const { name, feeds } of captured) {
        const tensors = Object.fromEntries(
          Object.entries(feeds).map(([k, f]) => [k, new ort.Tensor(f.type as 'float32', f.data as Float32Array, f.dims)]), // wraps, no copy
        );
        const proto = Object.getPrototypeOf(sessions[name]) as OrtSession;
        const t = performance.now();
        const out = await proto.run.call(sessions[name], tensors); // the unwrapped run
        const dt = performance.now() - t;
        disposeAll(out);
        (runsMs[name] ??= []).push(dt);
      }
      raw.push({ warmup, runsMs });
      done++;
    }
    const callsPerRun: Record<string, number> = {};
    for (const { name } of captured) callsPerRun[name] = (callsPerRun[name] ?? 0) + 1;
    progress('done');
    post({
      type: 'bench-done',
      result: { controller, raw, callsPerRun, timestepsPerRun: timesteps, backend, wasmMemories: wasmMemoryFigures(), resources: resourceEntries() },
    });
  } catch (err) {
    post({ type: 'bench-error', text: describeError(err) });
  } finally {
    for (const s of Object.values(sessions)) delete (s as { run?: unknown }).run; // back to the prototype's run
    busy = false;
  }
}
