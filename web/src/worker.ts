// The engine worker: Pyodide runs the pure-Python controller (runtime/, shipped as runtime.zip),
// which drives onnxruntime-web through runtime/web.py. Everything heavy lives here so the page
// stays responsive; the page only renders the Trace messages this worker posts.
import type { PyodideAPI } from 'pyodide';
import type { PyProxy } from 'pyodide/ffi';
import { runWorkerBench, setWasmOwner, watchWasmMemories, type OrtModule } from './bench/workerBench';
import {
  BundleLoadError,
  fetchManifest,
  fingerprintOf,
  loadBundleFiles,
  localBundleUrl,
  parseManifest,
  type Manifest,
} from './lib/bundleLoader';
import { folderProblem, manifestProblem, wasmProblem } from './derive/bundleCheck';
import {
  fetchRuntimeZip,
  fetchShippedSnapshot,
  installRuntime,
  openSnapshotCache,
  reseedRandom,
  saveSnapshot,
  snapshotKey,
} from './lib/pythonSnapshot';
import { compileFromCache } from './lib/wasmCache';
import { configureOrt, startWithWarmup } from './lib/ortSetup';
import { RemoteOrt, type LocalOrt } from './lib/remoteOrt';
import type { BenchOptions, EngineInfo, FromWorker, InitMsg, Provider, RequestMsg, ToWorker } from './lib/protocol';
import type { CheckManifest, EngineDescription, PythonEngine, WebModule } from './lib/pythonEngine';

declare const self: DedicatedWorkerGlobalScope;

// relative to the page's folder (the worker's script sits in assets/), so a site hosted in a sub-folder works
const BASE = new URL(import.meta.env.BASE_URL, new URL('..', self.location.href)).href;

function post(msg: FromWorker, transfer: Transferable[] = []) {
  self.postMessage(msg, transfer);
}

let engine: PythonEngine | null = null;
/** The ORT module the sessions were made with (the bench view makes its own tensors with it). */
let ortModule: OrtModule | null = null;
let initStarted = false;
let busy = false;
/** The CLIP scoring going on, if any: a run that arrives meanwhile waits for it (the page sends
 * side runs as soon as it sees the reader's run settled, which may be while CLIP still scores). */
let clipping: Promise<void> | null = null;
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
    generate(msg.runId, msg.request, !!msg.side);
  } else if (msg.type === 'stats') {
    post({ type: 'stats', ...memoryStats(), ort: remoteOrt?.where ?? 'engine' });
  } else if (msg.type === 'clip') {
    clip(msg.prompts);
  } else if (msg.type === 'bench') {
    bench(msg.options);
  } else if (msg.type === 'decode') {
    decodeStep(msg);
  } else if (msg.type === 'open-bundle') {
    void openBundle(msg);
  } else if (msg.type === 'stop') {
    // With a shared flag the page has set it already: setting it here again could land after the page
    // cleared it for its next run (a Generate right after a Stop), and that run would stop at once.
    stopRequested = true;
  }
};

/** One line a reader can act on, from a JS error or a Python traceback. */
function describeError(err: unknown): string {
  if (err instanceof BundleLoadError) return err.message;
  const text = err instanceof Error ? err.message : String(err);
  const lines = text
    .trim()
    .split('\n')
    .filter((l) => l.trim());
  const last = lines[lines.length - 1] ?? text;
  if (/bad_alloc|out of memory|Array buffer allocation failed|Aborted\(OOM\)/i.test(text)) {
    return (
      'the browser ran out of memory running this model: WebAssembly can address at most 4 GB, and this bundle’s ' +
      'weights and working memory need more. Use a smaller build (int8, int4) or a smaller model, or WebGPU if this ' +
      `machine has a GPU. (${last.replace(/^.*ERROR_MESSAGE: /, '')})`
    );
  }
  // "runtime.bundle.BundleError: msg" → "BundleError: msg"; ValueError text as is.
  return last.replace(/^[\w.]*\.(\w+Error): /, '$1: ').replace(/^(ValueError|BundleError|TokenizerError): /, '');
}

class ProviderError extends Error {}

async function chooseProvider(choice: InitMsg['provider'], needsF16: boolean) {
  type Adapter = {
    features: Set<string>;
    info?: { vendor?: string; architecture?: string; description?: string; isFallbackAdapter?: boolean };
  };
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
  if (choice === 'wasm')
    return { provider: 'wasm' as Provider, reason: 'WASM on the CPU, as chosen in the settings', adapter: null, software: null };
  if (choice === 'webgpu') {
    if (!adapter) throw new ProviderError(`WebGPU was chosen, but ${why}. Choose “auto” or “WASM” in the settings.`);
    return {
      provider: 'webgpu' as Provider,
      reason: `WebGPU, as chosen in the settings (adapter: ${name}${software ? ', software' : ''})`,
      adapter,
      software,
    };
  }
  if (adapter && !software)
    return { provider: 'webgpu' as Provider, reason: `WebGPU: a GPU adapter is available (${name})`, adapter, software };
  if (adapter)
    return {
      provider: 'wasm' as Provider,
      reason: `WASM on the CPU: the only WebGPU adapter is a software one (${name}), slower than WASM`,
      adapter: null,
      software: null,
    };
  return { provider: 'wasm' as Provider, reason: `WASM on the CPU: ${why}`, adapter: null, software: null };
}

async function startPython(): Promise<{
  py: PyodideAPI;
  pyodideMs: number;
  runtimeMs: number;
  web: WebModule;
  snapshot: 'restored' | 'shipped' | 'fresh';
}> {
  post({ type: 'status', phase: 'pyodide', text: 'starting Python (Pyodide)…' });
  let t = performance.now();
  const zipFetch = fetchRuntimeZip(BASE);
  zipFetch.catch(() => {});
  const { loadPyodide, version } = (await import(/* @vite-ignore */ `${BASE}pyodide/pyodide.mjs`)) as typeof import('pyodide');
  const options = { indexURL: `${BASE}pyodide/`, stdout: (s: string) => console.log(s), stderr: (s: string) => console.warn(s) };
  const zip = await zipFetch;
  const key = await snapshotKey(BASE, version, zip);
  const cache = await openSnapshotCache();
  // the snapshot a previous visit saved, else the one shipped with the page (downloading while the bundle does)
  const saved = await cache?.match(key).catch(() => undefined);
  const found = saved ?? (await fetchShippedSnapshot(key));
  let py: PyodideAPI | null = null;
  if (found) {
    const image = found.arrayBuffer().then((b) => new Uint8Array(b));
    image.catch(() => {}); // reported by loadPyodide
    try {
      py = await loadPyodide({ ...options, _loadSnapshot: image }); // Pyodide's wasm compiles meanwhile
      reseedRandom(py);
    } catch (e) {
      py = null;
      console.warn(`the ${saved ? 'saved' : "page's"} Python snapshot did not load (${(e as Error).message}); starting Python afresh`);
      if (saved) await cache?.delete(key).catch(() => {});
    }
    if (py && !saved && cache) void saveSnapshot(cache, key, await image).catch(() => {}); // the next visit reads it decoded
  }
  const snapshot = py ? (saved ? 'restored' : 'shipped') : 'fresh';
  py ??= await loadPyodide(options);
  const pyodideMs = performance.now() - t;
  t = performance.now();
  installRuntime(py, zip);
  const web = py.pyimport('runtime.web') as WebModule;
  return { py, pyodideMs, runtimeMs: performance.now() - t, web, snapshot };
}

/** After a fresh start, the next visit's snapshot is made in a throwaway worker once this one is
 * idle (after the first run, or 10 s after ready): it costs a Python start-up's CPU, off the critical path. */
let snapshotWanted = false;
let snapshotTimer: ReturnType<typeof setTimeout> | null = null;
function makeSnapshotSoon(delayMs: number) {
  if (!snapshotWanted) return;
  if (snapshotTimer !== null) clearTimeout(snapshotTimer);
  snapshotTimer = setTimeout(() => {
    if (busy) return makeSnapshotSoon(2000);
    snapshotWanted = false;
    const maker = new Worker(new URL('./snapshotWorker.ts', import.meta.url), { type: 'module', name: 'python-snapshot' });
    maker.onmessage = (e: MessageEvent<{ ok: boolean; text: string }>) => {
      if (!e.data.ok) console.warn(`the Python snapshot was not saved (${e.data.text}); the next visit starts Python afresh`);
      maker.terminate();
    };
    maker.onerror = () => maker.terminate();
  }, delayMs);
}

async function startOrt(provider: Provider, threads: number, adapter: unknown) {
  const ort = await loadOrt(provider, threads, adapter);
  await startWithWarmup(ort, provider);
  return ort;
}

/** WASM: onnxruntime-web starts in a worker of its own (ortWorker.ts), so its start and sessions run
 * beside Python's restore on another core; this worker talks to it through lib/remoteOrt.ts until the
 * page is idle, then the sessions move here (moveOrtSoon). */
let ortWorker: Worker | null = null;
let remoteOrt: RemoteOrt | null = null;
let ortThreads = 1;

function startOrtWorker(threads: number, wasmCache: string | undefined): Promise<RemoteOrt> {
  const worker = new Worker(new URL('./ortWorker.ts', import.meta.url), { type: 'module', name: 'onnxruntime' });
  ortWorker = worker;
  ortThreads = threads;
  let failed = (_text: string) => {};
  const failure = new Promise<never>((_, reject) => (failed = (text) => reject(new Error(text))));
  failure.catch(() => {});
  const started = RemoteOrt.start(worker, { base: BASE, threads, wasmCache });
  worker.onerror = (e) => {
    e.preventDefault();
    const text = `onnxruntime-web's worker failed: ${e.message || 'it could not start'}`;
    failed(text);
    void started.then((ort) => ort.failAll(text)).catch(() => {});
  };
  return Promise.race([started, failure]).then((ort) => (remoteOrt = ort));
}

/** The sessions move into this worker once it is idle (after the first run, or 10 s after ready): a
 * message each way per call cost a 1-thread run 2.6–7% (with 2 threads the noise hid it). Runs meanwhile
 * go on in the ORT worker; if the move fails they stay there. */
let moveTimer: ReturnType<typeof setTimeout> | null = null;
let moveTried = false; // once: a move that failed (no memory for the second copy) is not tried after every run
function moveOrtSoon(delayMs: number) {
  if (!remoteOrt || moveTried) return;
  if (moveTimer !== null) clearTimeout(moveTimer);
  moveTimer = setTimeout(() => {
    moveTimer = null;
    if (busy || opening) return moveOrtSoon(2000);
    moveTried = true;
    void moveOrt().catch((e) => console.warn(`onnxruntime-web stays in its own worker (${describeError(e)})`));
  }, delayMs);
}

async function moveOrt() {
  const remote = remoteOrt!;
  const local = await startOrt('wasm', ortThreads, null);
  await remote.moveHere(local as unknown as LocalOrt);
  ortWorker?.terminate();
  ortWorker = null;
}

/** Components made before Python asks, each as soon as its file is in and checked: all of one file
 * but CLIP's image tower (made after the first image, when a score is wanted). The options are
 * runtime/web.py WebBackend.load's for WASM; if they ever differ, Python makes its own session and
 * EngineInfo.ort.premade says fewer were used. */
function premaker(ort: Promise<RemoteOrt>, manifest: Manifest, madeMs: Record<string, number>) {
  const options = { executionProviders: ['wasm'], graphOptimizationLevel: 'all', logSeverityLevel: 3 };
  const early = new Map(
    Object.entries(manifest.components)
      .filter(([name, c]) => name !== 'clip_image' && c.files.length === 1)
      .map(([name, c]) => [c.files[0], name]),
  );
  return (rel: string, data: Uint8Array) => {
    const name = early.get(rel);
    if (name) void ort.then((o) => o.premake(data, options).then((s) => (madeMs[name] = s.madeMs))).catch(() => {});
  };
}

async function loadOrt(provider: Provider, threads: number, adapter: unknown) {
  // The JSEP build carries the WebGPU kernels (28 MB wasm); the WASM-only build is half that.
  const ort = configureOrt(provider === 'webgpu' ? await import('onnxruntime-web') : await import('onnxruntime-web/wasm'), BASE, threads);
  if (provider === 'webgpu' && adapter) (ort.env.webgpu as { adapter?: unknown }).adapter = adapter;
  return ort;
}

/** Worker start-up, as named stages: read the manifest; start Python (or restore its snapshot) in
 * parallel with choosing the provider, starting ORT and downloading the bundle; check the manifest
 * with the runtime's own schema; create the sessions; ask the runtime what it offers. */
async function init(msg: InitMsg) {
  const t0 = performance.now();
  stopView = msg.stopFlag ? new Int32Array(msg.stopFlag) : null;
  // before Python and onnxruntime fetch their WebAssembly
  if (msg.wasmCache && 'caches' in self) self.fetch = compileFromCache(self.fetch.bind(self), BASE, msg.wasmCache, caches);
  const bundleUrl = new URL(msg.bundleUrl, self.location.href).href;
  if (msg.bench) watchWasmMemories();

  post({ type: 'status', phase: 'bundle', text: 'reading the bundle manifest…' });
  const madeMs: Record<string, number> = {}; // each premade session's making, in the ORT worker
  const python = startPython(); // in parallel with the downloads: it is CPU-bound, they are not
  python.catch(() => {}); // reported where awaited
  const tBundle = performance.now();
  const { manifest, text } = await fetchManifest(bundleUrl);
  const { runtime, bundle } = await withSchemaErrors(python, text, async () => {
    const runtime = await chooseRuntime(msg, manifest);
    // before any download: paths inside the bundle, and a model WASM's 4 GB cannot hold
    const problem = manifestProblem(manifest) ?? (runtime.provider === 'wasm' ? wasmProblem(manifest) : null);
    if (problem) throw new BundleLoadError(problem);
    // with ORT in its own worker, each session is made as its file arrives, while Python still starts
    const onFile = runtime.ortOwn ? premaker(runtime.ortOwn, manifest, madeMs) : undefined;
    return { runtime, bundle: await downloadBundle(bundleUrl, manifest, text, onFile) };
  });
  const bundleMs = performance.now() - tBundle;
  const remote = runtime.ortOwn ? await runtime.ortOwn : null;
  await checkManifest(python, text); // before any session or run reads the model's facts
  const ort = remote ?? (await (runtime.ortEarly ?? loadOrt(runtime.provider, runtime.threads, runtime.adapter)));
  ortModule = ort;
  const started = await python;
  setWasmOwner('onnxruntime'); // Pyodide's memory exists by now; ORT instantiates its wasm at the first session

  const created = await createEngine(started.web, bundle.manifestText, bundle.files, ort, runtime.provider, bundleUrl, '');
  if (remote) void remote.dropUnused();
  engine = created.engine;
  pyodide = started.py;
  const described = describeEngine(started.py, created.engine);
  const sessions = created.sessions;

  const info: EngineInfo = {
    provider: runtime.provider,
    reason: runtime.reason,
    threads: runtime.threads,
    crossOriginIsolated: self.crossOriginIsolated,
    adapter: runtime.adapter ? describeAdapter(runtime.adapter) : null,
    adapterSoftware: runtime.software,
    ortVersion: ort.env.versions.web ?? '?',
    pythonVersion: started.py.runPython('import sys; sys.version.split()[0]') as string,
    bundle: bundleInfo(manifest, described, bundleUrl, bundle.totalBytes),
    request: described.request,
    pythonSnapshot: started.snapshot,
    timingsMs: { pyodide: started.pyodideMs, runtime: started.runtimeMs, bundle: bundleMs, sessions, total: performance.now() - t0 },
    downloadedBytes: bundle.downloadedBytes,
    loadedUrls: [...performance.getEntriesByType('resource').map((e) => e.name), ...(remote ? await remote.urls().catch(() => []) : [])],
    ort: { worker: remote ? 'own' : 'engine', premade: remote?.premadeUsed ?? 0, startMs: remote?.startMs ?? 0, madeMs },
  };
  post({ type: 'status', phase: 'ready', text: 'ready' });
  post({ type: 'ready', info });
  made = { manifestText: bundle.manifestText, files: bundle.files, bundleUrl, wasmThreads: runtime.wasmThreads, info };
  if (runtime.provider === 'webgpu' && !remote) void watchGpuDevice(ort as typeof import('onnxruntime-web'));
  snapshotWanted = started.snapshot === 'fresh' && !msg.bench;
  makeSnapshotSoon(10_000);
  moveOrtSoon(10_000);
}

type Started = Awaited<ReturnType<typeof startPython>>;

/** EngineInfo.bundle: the manifest's facts and what the runtime said of the bundle. */
function bundleInfo(manifest: Manifest, described: EngineDescription, bundleUrl: string, bytes: number): EngineInfo['bundle'] {
  return {
    name: manifest.name ?? 'bundle',
    url: bundleUrl,
    imageSize: manifest.model.image_size,
    latentSize: manifest.model.latent_size,
    schedulers: described.schedulers,
    defaultScheduler: described.schedulers.find((s) => s.isDefault)?.name ?? manifest.scheduler.default,
    maxLength: described.maxLength,
    vocabulary: described.vocabulary ?? {},
    model: described.model,
    previewBudget: described.previewBudget,
    previews: described.previews,
    hasClip: !!described.hasClip,
    bytes,
    precision: precisionsOf(manifest),
    description: manifest.about?.description ?? '',
    examples: manifest.about?.examples ?? [],
    card: manifest.about ?? null,
  };
}

const precisionsOf = (manifest: Manifest) => [...new Set(Object.values(manifest.components).map((c) => c.precision ?? 'fp32'))];

/** Open another bundle while this one keeps running: check its address or folder, its manifest (paths,
 * sizes, WASM's 4 GB, the runtime's schema), its tokenizer (before the big files), every file's
 * sha256 (kept in the Cache API), then make its sessions; only then the engine moves to it. Any
 * failure is one line (open-failed) and the engine keeps the bundle it had. */
let opening = false;
async function openBundle(msg: Extract<ToWorker, { type: 'open-bundle' }>) {
  if (!made || !engine || !pyodide || !ortModule)
    return post({ type: 'open-failed', text: 'the engine is not ready yet: wait until the current model has loaded' });
  if (opening) return post({ type: 'open-failed', text: 'another bundle is being opened: wait for it to finish' });
  opening = true;
  const py = pyodide;
  const t0 = performance.now();
  const say = (text: string, loaded = 0, total = 0) => post({ type: 'open-progress', text, loaded, total });
  let next: PythonEngine | null = null;
  try {
    const folder = msg.folder ? new Map(msg.folder.map((f) => [f.path, f.file])) : null;
    let manifest: Manifest;
    let text: string;
    let url: string;
    if (folder) {
      const file = folder.get('manifest.json');
      if (!file) throw new BundleLoadError('the folder has no manifest.json: pick the folder that `diffusion-explainer export` wrote');
      text = await file.text();
      manifest = parseManifest(text, 'manifest.json');
      url = localBundleUrl(BASE, await fingerprintOf(text));
    } else {
      say('reading the bundle manifest…');
      url = msg.bundleUrl;
      ({ manifest, text } = await fetchManifest(url));
    }
    const sizes = folder ? [...folder].map(([path, f]) => ({ path, size: f.size })) : [];
    const problem =
      manifestProblem(manifest) ??
      (made.info.provider === 'wasm' ? wasmProblem(manifest) : null) ??
      (folder ? folderProblem(manifest, sizes, '') : null);
    if (problem) throw new BundleLoadError(problem);
    await checkManifest(Promise.resolve({ py } as Started), text);
    const tok = (manifest.tokenizer as { files: { vocab: string; merges: string } }).files;
    const seen = new Map<string, Uint8Array>();
    const bundle = await loadBundleFiles(
      url,
      manifest,
      text,
      {
        progress: (file, loaded, total, fromCache) =>
          say(`${fromCache ? 'from the browser cache' : folder ? 'checking' : 'downloading'}: ${file}`, loaded, total),
        notice: (t) => post({ type: 'notice', level: 'warning', text: t }),
      },
      {
        smallFirst: true,
        origin: folder ? 'folder' : 'server',
        kind: folder ? 'folder' : 'url',
        read: folder ? async (rel) => new Uint8Array(await folder.get(rel)!.arrayBuffer()) : undefined,
        onFile: (rel, data) => {
          if (rel !== tok.vocab && rel !== tok.merges) return;
          seen.set(rel, data);
          if (seen.size === 2) checkTokenizer(py, text, seen.get(tok.vocab)!, seen.get(tok.merges)!);
        },
      },
    );
    const bundleMs = performance.now() - t0;
    while (busy) await new Promise((r) => setTimeout(r, 100)); // a run on the old model finishes first
    busy = true;
    try {
      say(`creating onnxruntime-web sessions for “${manifest.name ?? 'bundle'}”…`);
      const web = py.pyimport('runtime.web') as WebModule;
      next = web.Engine(bundle.manifestText, bundle.files, ortModule, made.info.provider, url);
      const sessions = await next.load((name, i, n) => say(`creating session ${i + 1}/${n}: ${name}…`));
      const described = describeEngine(py, next);
      const old = engine;
      engine = next;
      next = null;
      try {
        old.close();
      } finally {
        old.destroy();
      }
      const info: EngineInfo = {
        ...made.info,
        bundle: bundleInfo(manifest, described, url, bundle.totalBytes),
        request: described.request,
        timingsMs: { ...made.info.timingsMs, bundle: bundleMs, sessions, total: performance.now() - t0 },
        downloadedBytes: bundle.downloadedBytes,
      };
      made = { ...made, manifestText: bundle.manifestText, files: bundle.files, bundleUrl: url, info };
      post({ type: 'bundle-switched', info });
    } finally {
      busy = false;
    }
  } catch (err) {
    if (next) {
      try {
        next.close();
      } finally {
        next.destroy();
      }
    }
    post({ type: 'open-failed', text: describeError(err) });
  } finally {
    opening = false;
  }
}

/** The bundle's tokenizer builds with its special tokens (runtime/tokenizer.py), or one line naming its file. */
function checkTokenizer(py: PyodideAPI, manifestText: string, vocab: Uint8Array, merges: Uint8Array) {
  const check = py.pyimport('runtime.tokenizer').check_bundle_tokenizer as PyProxy & ((m: string, v: string, g: string) => unknown);
  try {
    check(manifestText, new TextDecoder().decode(vocab), new TextDecoder().decode(merges));
  } catch (e) {
    throw new BundleLoadError(describeError(e));
  } finally {
    check.destroy();
  }
}

/** Stage: the provider (WebGPU or WASM) and thread count for this bundle; starts ORT early. */
async function chooseRuntime(msg: InitMsg, manifest: Manifest) {
  const precision = [...new Set(Object.values(manifest.components).map((c) => c.precision ?? 'fp32'))];
  const choice = await chooseProvider(msg.provider, precision.includes('fp16'));
  const isolated = self.crossOriginIsolated;
  const wasmThreads = isolated ? msg.threads || Math.max(1, Math.min(self.navigator.hardwareConcurrency || 1, 4)) : 1;
  const threads = choice.provider === 'webgpu' ? 1 : wasmThreads;
  // not in the bench: it attributes WebAssembly memories to Pyodide or ORT by the order they start,
  // in this worker (and its raw ORT timings are the kernels' alone, no messages between workers)
  const own = !msg.bench && choice.provider === 'wasm';
  const ortOwn = own ? startOrtWorker(threads, msg.wasmCache) : null;
  // the sessions move here later (moveOrtSoon): this worker's own copy of ORT's glue is fetched now,
  // so it is among the files kept for offline use
  if (own) void import('onnxruntime-web/wasm').catch(() => {});
  const ortEarly = msg.bench || own ? null : startOrt(choice.provider, threads, choice.adapter);
  ortEarly?.catch(() => {}); // awaited by init; its error is reported there
  ortOwn?.catch(() => {});
  if (!isolated && choice.provider === 'wasm') {
    post({
      type: 'notice',
      level: 'warning',
      text: 'the page is not cross-origin isolated (no COOP/COEP headers), so WASM runs on one thread',
    });
  }
  return { ...choice, precision, threads, wasmThreads, ortEarly, ortOwn };
}

/** Stage: every bundle file, from the Cache API or the network, checked against its sha256. */
async function downloadBundle(bundleUrl: string, manifest: Manifest, text: string, onFile?: (rel: string, data: Uint8Array) => void) {
  post({ type: 'status', phase: 'bundle', text: `downloading the bundle “${manifest.name ?? 'bundle'}”…` });
  return loadBundleFiles(
    bundleUrl,
    manifest,
    text,
    {
      progress: (file, loaded, total, fromCache) => post({ type: 'progress', file, loaded, total, fromCache }),
      notice: (t) => post({ type: 'notice', level: 'warning', text: t }),
    },
    { onFile },
  );
}

/** Stage: the manifest's one schema is runtime/bundle.py's check_manifest (Python); its one-line
 * message is the error a reader sees for a malformed manifest. */
async function checkManifest(python: Promise<Started>, text: string) {
  const { py } = await python;
  const check = py.pyimport('runtime.bundle').check_manifest_json as CheckManifest;
  try {
    const r = check(text);
    if (r instanceof py.ffi.PyProxy) r.destroy();
  } catch (e) {
    throw new BundleLoadError(describeError(e));
  } finally {
    check.destroy();
  }
}

/** Python starts in parallel with the download, so the JS reads the manifest first; if a malformed
 * manifest trips that JS, the schema's own message replaces the JS error. */
async function withSchemaErrors<T>(python: Promise<Started>, text: string, stage: () => Promise<T>): Promise<T> {
  try {
    return await stage();
  } catch (e) {
    if (e instanceof BundleLoadError) throw e;
    await checkManifest(python, text);
    throw e;
  }
}

/** Stage: runtime/web.py's Engine over the loaded files, with every ORT session created. */
async function createEngine(
  web: WebModule,
  manifestText: string,
  files: unknown,
  ort: OrtModule,
  provider: Provider,
  bundleUrl: string,
  on: string,
) {
  post({ type: 'status', phase: 'sessions', text: `creating onnxruntime-web sessions${on}…` });
  const created = web.Engine(manifestText, files, ort, provider, bundleUrl);
  const sessions = await created.load((name, i, n) =>
    post({ type: 'status', phase: 'sessions', text: `creating session ${i + 1}/${n}${on}: ${name}…` }),
  );
  return { engine: created, sessions };
}

/** Stage: what the controls need from the runtime (schedulers, token window, request limits and
 * defaults …). Engine.describe converts to a JS object itself; a PyProxy is converted here. */
function describeEngine(py: PyodideAPI, e: PythonEngine): EngineDescription {
  const raw = e.describe();
  if (!(raw instanceof py.ffi.PyProxy)) return raw as EngineDescription;
  const described = raw.toJs({ dict_converter: Object.fromEntries }) as EngineDescription;
  raw.destroy();
  return described;
}

/** What the engine was made from, so it can be made again on WASM if the GPU device is lost. */
let made: { manifestText: string; files: unknown; bundleUrl: string; wasmThreads: number; info: EngineInfo } | null = null;
/** Why the WebGPU device was lost (null while it is not); the engine moves to WASM at once. */
let gpuLost: string | null = null;
let onGpuLost: (() => void) | null = null;
let fallback: Promise<void> | null = null;

type GpuDevice = { lost: Promise<{ reason: string; message: string }>; destroy(): void };

/** A GPU device can be lost at any time (driver reset, GPU process crash, the tab backgrounded on
 * some systems): ORT's sessions on it are dead, but the bundle's bytes are still here. */
async function watchGpuDevice(ort: typeof import('onnxruntime-web')) {
  const device = (await (ort.env.webgpu as unknown as { device: Promise<GpuDevice> }).device) as GpuDevice;
  (self as unknown as { dxGpuDevice: GpuDevice }).dxGpuDevice = device; // for the console (and the device-loss test)
  const info = await device.lost;
  gpuLost = info.message ? `${info.reason}: ${info.message}` : info.reason;
  onGpuLost?.();
  if (!busy) void fallBackToWasm().catch((err) => post({ type: 'fatal', text: describeError(err) }));
}

/** Remake the engine on WASM from the bytes already loaded; the page keeps everything else. */
function fallBackToWasm(): Promise<void> {
  fallback ??= (async () => {
    if (!made || !engine) throw new Error('the engine is not ready yet');
    post({ type: 'notice', level: 'warning', text: `the WebGPU device was lost (${gpuLost}); moving to WASM on the CPU…` });
    try {
      engine.close();
    } catch {
      /* sessions on a lost device: dropped either way */
    }
    engine.destroy();
    engine = null;
    const ort = await loadOrt('wasm', made.wasmThreads, null);
    ortModule = ort;
    const web = pyodide!.pyimport('runtime.web') as WebModule;
    const { engine: next } = await createEngine(web, made.manifestText, made.files, ort, 'wasm', made.bundleUrl, ' on WASM');
    engine = next;
    const info: EngineInfo = {
      ...made.info,
      provider: 'wasm',
      threads: made.wasmThreads,
      adapter: null,
      adapterSoftware: null,
      reason: `WASM on the CPU: the WebGPU device was lost (${gpuLost})`,
      ortVersion: ort.env.versions.web ?? '?',
    };
    post({ type: 'status', phase: 'ready', text: 'ready' });
    post({ type: 'engine-changed', info });
    post({
      type: 'notice',
      level: 'warning',
      text: `now running on WASM on the CPU (${made.wasmThreads} thread${made.wasmThreads > 1 ? 's' : ''}): the WebGPU device was lost`,
    });
  })();
  return fallback;
}

function describeAdapter(a: unknown): string {
  const info = (a as { info?: { vendor?: string; architecture?: string; description?: string } }).info;
  return [info?.vendor, info?.architecture, info?.description].filter(Boolean).join(' ') || 'unnamed adapter';
}

/** A run past its run-done whose predicted images are still being decoded (runtime/web.py decodes
 * the ones its preview budget skipped after the run): a new request makes it stop and waits for it. */
let decodingAfter: { superseded: boolean; finished: Promise<void> } | null = null;

let pyodide: PyodideAPI | null = null;

/** What a leak would grow: Pyodide's WebAssembly heap, Python's tracked objects and the JS proxies
 * Python holds (tests run many runs and compare). */
function memoryStats() {
  if (!pyodide) return { heapBytes: 0, pyObjects: 0, jsProxies: 0 };
  // defined once: compiling a snippet per call would itself leave objects behind
  if (!pyodide.globals.has('_dx_memory_stats')) {
    pyodide.runPython(
      'def _dx_memory_stats():\n    import gc\n    gc.collect()\n    o = gc.get_objects()\n' +
        "    return [len(o), sum(1 for x in o if type(x).__name__.startswith('JsProxy'))]",
    );
  }
  const fn = pyodide.globals.get('_dx_memory_stats') as PyProxy & (() => PyProxy & { toJs(): number[] });
  const counts = fn();
  const [pyObjects, jsProxies] = counts.toJs();
  counts.destroy();
  fn.destroy();
  const heap = (pyodide as unknown as { _module: { HEAP8: Int8Array } })._module.HEAP8;
  return { heapBytes: heap.byteLength, pyObjects, jsProxies };
}

/** CLIP's similarities of the last run's images to the reader's alternative prompts (when idle). */
async function clip(prompts: string[]) {
  while (decoding) await decoding;
  if (!engine || busy) return;
  busy = true;
  let done = () => {};
  clipping = new Promise<void>((r) => (done = r));
  try {
    await engine.post_clip((m) => post(m), prompts);
  } catch (err) {
    post({ type: 'notice', level: 'warning', text: `CLIP: ${describeError(err)}` });
  } finally {
    busy = false;
    clipping = null;
    done();
    decodeStep();
  }
}

async function generate(runId: number, request: RequestMsg, side = false) {
  if (gpuLost !== null) await fallBackToWasm().catch(() => {}); // lost while idle or in another task: WASM first
  if (!engine) return post({ type: 'run-error', runId, text: 'the engine is not ready yet' });
  // one engine call at a time: a decode may start as CLIP ends (clip() drains the decode queue), so wait for both
  while (decoding || clipping) await (decoding ?? clipping);
  if (busy && decodingAfter) {
    decodingAfter.superseded = true;
    await decodingAfter.finished;
  }
  if (busy) return post({ type: 'run-error', runId, text: 'a run is already going on; stop it first' });
  busy = true;
  stopRequested = false; // the shared flag is cleared by the page before it sends 'generate'
  let finish = () => {};
  const run = { superseded: false, finished: new Promise<void>((r) => (finish = r)) };
  let finished = false; // all its steps ran
  const postRun = (msg: FromWorker, transfer?: Transferable[]) => {
    if (msg.type === 'run-done') {
      decodingAfter = run; // the page counts the run as done from here
      finished = !msg.cancelled;
    }
    post(msg, transfer);
  };
  const onGpu = gpuLost === null && made?.info.provider === 'webgpu';
  const gpuLostSignal = new Promise<void>((r) => (onGpuLost = r));
  try {
    // runtime/web.py posts run-start / run-step / run-done (or run-invalid), then any run-image, itself.
    const running = engine.generate(
      runId,
      request,
      postRun,
      () => isStopped() || run.superseded,
      stopView ? undefined : yieldToEvents,
      undefined,
      !side,
    );
    // a lost device can leave a session's run waiting for ever: stop between steps, and stop waiting soon after
    const lost = gpuLostSignal.then(() => {
      run.superseded = true;
      return Promise.race([running, new Promise<void>((r) => setTimeout(r, 3000))]);
    });
    await (onGpu ? Promise.race([running, lost]) : running);
  } catch (err) {
    // a run on a lost device usually fails (a mapAsync aborted) a moment before the device says it is lost
    if (onGpu) await Promise.race([gpuLostSignal, new Promise<void>((r) => setTimeout(r, 1000))]);
    if (!(onGpu && gpuLost !== null)) post({ type: 'run-error', runId, text: describeError(err) });
  } finally {
    onGpuLost = null;
    if (onGpu && gpuLost !== null) {
      try {
        await fallBackToWasm();
        if (!finished)
          post({
            type: 'run-error',
            runId,
            text: `the WebGPU device was lost during this run (${gpuLost}); the page now runs on WASM on the CPU: press Generate to run it again`,
          });
      } catch (err) {
        post({ type: 'fatal', text: `the WebGPU device was lost and WASM could not take over: ${describeError(err)}` });
      }
    }
    if (decodingAfter === run) decodingAfter = null;
    busy = false;
    post({ type: 'run-settled', runId });
    finish();
    decodeStep();
    makeSnapshotSoon(1000);
    moveOrtSoon(1000);
  }
}

/** Steps the reader picked that the run did not preview: decoded one at a time, between runs. */
const decodeQueue: Extract<ToWorker, { type: 'decode' }>[] = [];
let decoding: Promise<void> | null = null; // a run or CLIP that arrives meanwhile waits for it (~one VAE call)
function decodeStep(msg?: Extract<ToWorker, { type: 'decode' }>) {
  if (msg) decodeQueue.push(msg);
  if (!engine || busy || decoding) return; // generate() and clip() call this again when they end
  const e = engine;
  decoding = (async () => {
    for (let m = decodeQueue.shift(); m; m = decodeQueue.shift()) {
      try {
        await e.decode_step(m.runId, m.index, m.latent, (x, t) => post(x, t));
      } catch (err) {
        post({ type: 'notice', level: 'warning', text: `decoding step ${m.index + 1}: ${describeError(err)}` });
      }
    }
  })().finally(() => (decoding = null));
}

/** The bench view's request: runs bench/workerBench.ts on the loaded engine. */
async function bench(options: BenchOptions) {
  if (!engine || !ortModule) return post({ type: 'bench-error', text: 'the engine is not ready yet' });
  if (busy) return post({ type: 'bench-error', text: 'a run is already going on' });
  busy = true;
  try {
    const result = await runWorkerBench(engine, ortModule, options, (text, done, total) =>
      post({ type: 'bench-progress', text, done, total }),
    );
    post({ type: 'bench-done', result });
  } catch (err) {
    post({ type: 'bench-error', text: describeError(err) });
  } finally {
    busy = false;
  }
}

export type { Manifest };
