// The page's side of the engine worker, and the one place its messages are read: starts it, turns
// its messages into reactive state and a growing Trace, restarts it when the provider settings
// change (ORT's provider and thread count are fixed once its wasm has started), and runs the bench
// view's benchmark (`bench()`), so the explainer and the bench load the bundle the same way.
import type {
  BenchOptions,
  EngineInfo,
  EngineStats,
  FromWorker,
  Phase,
  ProviderChoice,
  RequestMsg,
  StepMsg,
  ToWorker,
  Trace,
  WorkerBenchResult,
} from '../lib/protocol';
import { bundleAddress } from '../derive/bundleCheck';
import { engineWasmCache, keepForOffline } from '../isolation';
import { writeBundle } from './url.svelte';

/** The page's own bundle folder (`diffusion-explainer serve` and the static site put it there). */
const DEFAULT_BUNDLE = () => new URL(`${import.meta.env.BASE_URL}bundle/`, location.href).href;
import { previewEveryFor, settled } from '../derive/jobs';
import type { OpenedTrace, TraceMeta } from '../lib/tracefile';
import { REPLAY_CANNOT_RUN } from '../text/replay';

/** The trace file a replay shows: what trace.json says about the run, and the file itself. */
export interface Replay {
  meta: TraceMeta;
  /** The file's name (or its address's last part). */
  name: string;
  /** Where it was fetched from (?trace=URL), or null for a local file. */
  url: string | null;
  bytes: number;
  file: Uint8Array;
}

export interface EngineSettings {
  bundleUrl: string;
  provider: ProviderChoice;
  /** 0: automatic, min(hardwareConcurrency, 4). */
  threads: number;
  /** The bench view: the worker records WebAssembly memories as they are created (peak-memory figures). */
  bench?: boolean;
}

export interface Notice {
  level: 'info' | 'warning';
  text: string;
}

declare global {
  interface Window {
    /** Debug hook for tests and the console: the last finished (or stopped) run's Trace. */
    __lastTrace?: Trace;
    /** Debug hook for leak tests: the worker's memory figures. */
    __engineStats?: () => Promise<EngineStats>;
    /** Debug hook: the compare view's second run (growing, then done). */
    __compareTrace?: Trace;
    /** Debug hook: what the engine runs on (provider, reason, timings). */
    __engineInfo?: EngineInfo;
    /** Debug hook for `diffusion-explainer bench`: the plain loop (no views) timed in this same visit. */
    __engineBench?: (options: BenchOptions) => Promise<WorkerBenchResult>;
  }
}

type Waiter<T> = { resolve: (v: T) => void; reject: (e: Error) => void };

export class EngineClient {
  /** 'replay': a trace file is shown (`replay`), no model is loaded. */
  state = $state<'loading' | 'ready' | 'running' | 'error' | 'replay'>('loading');
  phase = $state<Phase>('bundle');
  status = $state('');
  progress = $state.raw<{ file: string; loaded: number; total: number; fromCache: boolean } | null>(null);
  notices = $state<Notice[]>([]);
  info = $state.raw<EngineInfo | null>(null);
  fatal = $state<string | null>(null);
  /** The current or last run; replaced (not mutated) per message so tensors are not proxied. */
  trace = $state.raw<Trace | null>(null);
  /** The reader's run the worker is still on (its steps, previews or CLIP scores to come), or null:
   * off-screen views hold still until it is done (components/Held.svelte). */
  inFlight = $state<number | null>(null);
  /** Whether the worker is still on this run (its steps, previews or CLIP's scores to come). */
  workingOn(t: Trace | null | undefined): boolean {
    return !!t && this.inFlight === t.runId;
  }
  runError = $state<string | null>(null);
  settings = $state.raw<EngineSettings>({ bundleUrl: '/bundle/', provider: 'auto', threads: 0 });
  /** Runs the explainer asks for beside the reader's (other guidance scales, other seeds), by key;
   * queued, run one at a time when the engine is free, and kept for the session. */
  sideRuns = $state.raw<Record<string, Trace>>({});
  /** The benchmark's progress while `bench()` runs. */
  benchProgress = $state.raw<{ text: string; done: number; total: number } | null>(null);
  /** Another bundle being opened (the engine keeps running the current one meanwhile). */
  opening = $state.raw<{ text: string; loaded: number; total: number } | null>(null);
  /** Why the last bundle the reader opened could not be (one line), or null. */
  openError = $state<string | null>(null);
  /** Bumped when a bundle was opened or cached (the cached-bundle list reads it again). */
  bundlesChanged = $state(0);
  /** A trace file shown in every view instead of a live run (controls/TraceControls.svelte); no model is loaded. */
  replay = $state.raw<Replay | null>(null);

  #worker: Worker | null = null;
  #stopFlag: SharedArrayBuffer | null = null;
  #nextRun = 1;
  #readyWaiters: Waiter<EngineInfo>[] = [];
  #bench: Waiter<WorkerBenchResult> | null = null;
  /** Side runs waiting for the engine, in order (the page's job queue shows them). */
  sideQueue = $state.raw<{ key: string; request: RequestMsg }[]>([]);
  /** The side run the worker is on now, or null. */
  sideRunning = $state<string | null>(null);
  /** What the last Generate did to the side runs it found (dropped from the queue, stopped). */
  sideDropped = $state.raw<{ dropped: string[]; stopped: string | null } | null>(null);
  /** The reader's run whose preview decoding a Stop cut short (it counts as settled). */
  decodingCut = $state<number | null>(null);
  #pendingMain: RequestMsg | null = null;
  #sideIds = new Map<number, string>();
  #statsWaiter: ((s: EngineStats) => void) | null = null;

  start(settings: EngineSettings) {
    this.replay = null;
    this.#worker?.terminate();
    this.#failPending('the engine was restarted');
    this.#pendingSteps.clear();
    this.inFlight = null;
    this.settings = settings;
    this.state = 'loading';
    this.fatal = null;
    this.info = null;
    this.progress = null;
    this.notices = [];
    this.sideQueue = [];
    this.sideRunning = null;
    this.#pendingMain = null;
    this.#stopFlag = globalThis.crossOriginIsolated ? new SharedArrayBuffer(4) : null;
    this.opening = null;
    this.openError = null;
    // ?bundle= must be an http(s) folder: anything else is refused in one line and the default opens
    const address = bundleAddress(settings.bundleUrl, location.href);
    if ('error' in address) {
      this.notices = [{ level: 'warning', text: `${address.error}; the default model opened instead` }];
      this.settings = settings = { ...settings, bundleUrl: DEFAULT_BUNDLE() };
    }
    const worker = new Worker(new URL('../worker.ts', import.meta.url), { type: 'module', name: 'engine' });
    worker.onmessage = (e: MessageEvent<FromWorker>) => this.#onMessage(e.data);
    worker.onerror = (e) => this.#fail(`the engine worker failed: ${e.message || 'unknown error'}`);
    this.#worker = worker;
    // resolved here: relative to the page, not to the worker's script; a folder URL ends in '/'
    const bundleUrl = new URL(settings.bundleUrl, location.href);
    if (!bundleUrl.pathname.endsWith('/')) bundleUrl.pathname += '/';
    const wasmCache = engineWasmCache();
    this.#send({
      type: 'init',
      bundleUrl: bundleUrl.href,
      provider: settings.provider,
      threads: settings.threads,
      stopFlag: this.#stopFlag,
      ...(settings.bench ? { bench: true } : {}),
      ...(wasmCache ? { wasmCache } : {}),
    });
  }

  /** Open another bundle: an http(s) folder address, or a local folder's files (paths inside it).
   * The current model keeps running until the new one is checked and loaded; a failure is one line
   * in `openError`. Without a running engine an address restarts the engine on it. */
  openBundle(source: { url: string } | { folder: { path: string; file: File }[] }) {
    this.openError = null;
    if ('url' in source) {
      const address = bundleAddress(source.url, location.href);
      if ('error' in address) {
        this.openError = address.error;
        return;
      }
      if (!this.info) return this.start({ ...this.settings, bundleUrl: address.url });
      this.opening = { text: 'opening…', loaded: 0, total: 0 };
      this.#send({ type: 'open-bundle', bundleUrl: address.url });
    } else {
      if (!this.info) {
        this.openError = 'no model is running to open the folder with: reload the page, then open the folder again';
        return;
      }
      this.opening = { text: 'opening the folder…', loaded: 0, total: 0 };
      this.#send({ type: 'open-bundle', bundleUrl: '', folder: source.folder });
    }
  }

  /** Show a trace file instead of a live run: the worker ends (no model stays loaded), the views read
   * the file's Trace and bundle facts, and nothing can run until `leaveReplay()`. */
  openReplay(opened: OpenedTrace, from: { name: string; url: string | null; file: Uint8Array }) {
    this.#worker?.terminate();
    this.#worker = null;
    this.#failPending('a trace file was opened');
    this.#pendingSteps.clear();
    this.sideQueue = [];
    this.sideRunning = null;
    this.#pendingMain = null;
    this.sideRuns = {};
    this.progress = null;
    this.fatal = null;
    this.runError = null;
    this.info = opened.info;
    this.inFlight = null;
    this.replay = { meta: opened.meta, name: from.name, url: from.url, bytes: opened.bytes, file: from.file };
    this.trace = { ...opened.trace, runId: this.#nextRun++ };
    this.state = 'replay';
    window.__lastTrace = this.trace;
  }

  /** Back to the live model (loaded again, from the cache when it was there). */
  leaveReplay() {
    this.trace = null;
    this.start(this.settings);
  }

  /** Whether a view may ask the engine to run now (Generate, side runs, CLIP scores). */
  get canRun(): boolean {
    return this.state === 'ready' && !this.replay;
  }

  /** Why nothing can run now, in a sentence for a view; null when it can. */
  get cannotRun(): string | null {
    if (this.replay) return REPLAY_CANNOT_RUN;
    if (this.state === 'loading') return 'The model is still loading.';
    if (this.state === 'running') return 'A run is in progress.';
    if (this.state === 'error') return this.fatal ?? 'The model could not be started.';
    return null;
  }

  /** Resolves with the engine's info once it is ready; rejects with the reason it could not start. */
  whenReady(): Promise<EngineInfo> {
    if (this.info && this.state !== 'loading' && this.state !== 'error') return Promise.resolve(this.info);
    if (this.state === 'error') return Promise.reject(new Error(this.fatal ?? 'the engine could not be started'));
    return new Promise((resolve, reject) => this.#readyWaiters.push({ resolve, reject }));
  }

  generate(request: RequestMsg, waited = false) {
    // a side run on the engine: the reader's run goes first; the side run stops, the queue is dropped
    // (those runs belong to the previous run's request; their views ask again for the new one)
    if (this.state === 'running' && this.sideRunning !== null) {
      this.sideDropped = { dropped: this.sideQueue.map((q) => q.key), stopped: this.sideRunning };
      this.sideQueue = [];
      this.#pendingMain = $state.snapshot(request) as RequestMsg;
      if (this.#stopFlag) Atomics.store(new Int32Array(this.#stopFlag), 0, 1);
      this.#send({ type: 'stop' });
      return;
    }
    if (this.state !== 'ready') return;
    // (a run that waited for a side run to stop keeps the words about what it stopped)
    if (this.sideQueue.length || !waited)
      this.sideDropped = this.sideQueue.length ? { dropped: this.sideQueue.map((q) => q.key), stopped: null } : null;
    this.sideQueue = [];
    this.runError = null;
    this.state = 'running';
    // cleared here, before the message, so a Stop pressed right away is never lost
    if (this.#stopFlag) Atomics.store(new Int32Array(this.#stopFlag), 0, 0);
    const sent = $state.snapshot(request) as RequestMsg;
    // x̂₀ decoded at a few evenly spaced steps (the runtime says how many); the others when picked
    sent.previewEvery = previewEveryFor(sent.steps, this.info?.bundle.previews ?? 0);
    this.#send({ type: 'generate', runId: this.#nextRun++, request: sent });
  }

  /** The reader picked a step whose x̂₀ the run did not preview: decode it now (once per run and step). */
  ensureImage(index: number) {
    const t = this.trace;
    const step = t?.done && !this.replay ? t.steps[index] : undefined;
    if (!t || !step || step.image || !step.predX0) return;
    const key = `${t.runId}:${index}`;
    if (this.#decodeAsked.has(key)) return;
    this.#decodeAsked.add(key);
    this.#send({ type: 'decode', runId: t.runId, index, latent: step.predX0 });
  }
  #decodeAsked = new Set<string>();

  /** Queue a run for a view (kept under `key` for the session); nothing happens if it ran or waits. */
  runSide(key: string, request: RequestMsg) {
    if (this.replay) return; // no model: views read `cannotRun`
    if ((this.sideRuns[key] && !this.sideRuns[key].cancelled) || this.sideQueue.some((q) => q.key === key)) return;
    this.sideQueue = [...this.sideQueue, { key, request: $state.snapshot(request) as RequestMsg }];
    this.#pump();
  }

  /** Whether a side run with this key is waiting or running. */
  sidePending(key: string): boolean {
    return this.sideQueue.some((q) => q.key === key) || (!!this.sideRuns[key] && !this.sideRuns[key].done);
  }

  /** Stop one side run: drop it from the queue, or stop it if it runs now (the rest of the queue stays). */
  stopSide(key: string) {
    this.sideQueue = this.sideQueue.filter((q) => q.key !== key);
    if (this.sideRunning === key) {
      if (this.#stopFlag) Atomics.store(new Int32Array(this.#stopFlag), 0, 1);
      this.#send({ type: 'stop' });
    }
  }

  /** Side runs wait until the reader's run has settled (its previews decoded): a side run started
   * earlier would cut that decoding short. */
  #pump() {
    if (this.state !== 'ready') return;
    if (this.#pendingMain) {
      const request = this.#pendingMain;
      this.#pendingMain = null;
      return this.generate(request, true);
    }
    if (!this.sideQueue.length || !(settled(this.trace) || this.trace?.runId === this.decodingCut)) return;
    const [{ key, request }, ...rest] = this.sideQueue;
    this.sideQueue = rest;
    this.sideRunning = key;
    const runId = this.#nextRun++;
    this.#sideIds.set(runId, key);
    this.state = 'running';
    if (this.#stopFlag) Atomics.store(new Int32Array(this.#stopFlag), 0, 0);
    this.#send({ type: 'generate', runId, request, side: true });
  }

  #side(runId: number, fn: (t: Trace) => Trace): boolean {
    const key = this.#sideIds.get(runId);
    if (key === undefined) return false;
    const t = this.sideRuns[key];
    if (t) this.sideRuns = { ...this.sideRuns, [key]: fn(t) };
    return true;
  }

  /** The worker's memory figures (Pyodide heap, Python objects, JS proxies), for leak tests. */
  stats(): Promise<EngineStats> {
    return new Promise((resolve) => {
      this.#statsWaiter = resolve;
      this.#send({ type: 'stats' });
    });
  }

  /** Ask CLIP how the last run's images match these alternative prompts (answers with run-clip). */
  clipAlternatives(prompts: string[]) {
    if (this.state !== 'ready') return;
    this.#send({ type: 'clip', prompts: $state.snapshot(prompts) as string[] });
  }

  stop() {
    this.sideQueue = [];
    if (this.trace?.done) this.decodingCut = this.trace.runId;
    if (this.#stopFlag) Atomics.store(new Int32Array(this.#stopFlag), 0, 1);
    this.#send({ type: 'stop' });
  }

  /** The bench view's benchmark on the ready engine (start it with `bench: true` for memory figures);
   * resolves with the worker's raw samples, rejects with the worker's words. */
  bench(options: BenchOptions): Promise<WorkerBenchResult> {
    if (this.state !== 'ready') return Promise.reject(new Error('the engine is not ready yet'));
    this.state = 'running';
    this.benchProgress = null;
    return new Promise((resolve, reject) => {
      this.#bench = { resolve, reject };
      this.#send({ type: 'bench', options: $state.snapshot(options) as BenchOptions });
    });
  }

  /** End the worker (the page's view goes away). */
  close() {
    this.#worker?.terminate();
    this.#worker = null;
    this.#failPending('the engine was closed');
  }

  #send(msg: ToWorker) {
    this.#worker?.postMessage(msg);
  }

  #fail(text: string) {
    this.inFlight = null;
    this.fatal = text;
    this.state = 'error';
    this.#failPending(text);
  }

  #failPending(text: string) {
    for (const w of this.#readyWaiters.splice(0)) w.reject(new Error(text));
    this.#bench?.reject(new Error(text));
    this.#bench = null;
  }

  /** Steps that arrived since the views last rendered, by run. Why: every view re-renders per trace
   * update, and on a 2-core machine that rendering takes the cores the model's WASM threads need
   * (the page ran at ~3× the controller's time per step); views update at most every RENDER_EVERY_MS
   * (250 rather than 150: click → image 1.20–1.25 → 1.18× the plain loop, settled 1.44–1.49 → 1.39–1.40×,
   * 2 threads, bench/results/round5-page/views-ab.json; a run slower than 4 steps a second shows every step). */
  #pendingSteps = new Map<number, StepMsg[]>();
  #flushTimer: ReturnType<typeof setTimeout> | null = null;
  #lastFlush = 0;
  static RENDER_EVERY_MS = 250;

  #queueStep(runId: number, step: StepMsg) {
    const list = this.#pendingSteps.get(runId);
    if (list) list.push(step);
    else this.#pendingSteps.set(runId, [step]);
    const wait = EngineClient.RENDER_EVERY_MS - (performance.now() - this.#lastFlush);
    if (wait <= 0) this.#flush();
    else this.#flushTimer ??= setTimeout(() => this.#flush(), wait);
  }

  #flush() {
    if (this.#flushTimer !== null) clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    this.#lastFlush = performance.now();
    if (!this.#pendingSteps.size) return;
    const pending = [...this.#pendingSteps];
    this.#pendingSteps.clear();
    for (const [runId, steps] of pending) {
      if (this.#side(runId, (t) => ({ ...t, steps: [...t.steps, ...steps] }))) continue;
      if (this.trace?.runId === runId) this.trace = { ...this.trace, steps: [...this.trace.steps, ...steps] };
    }
  }

  #offlineKept = false;
  /** The offline worker keeps this visit's files once its first run is done (or 15 s after ready
   * without one): fetching them again for the cache is work the first image should not wait for. */
  #keepForOffline() {
    if (this.#offlineKept || !this.info) return;
    this.#offlineKept = true;
    void keepForOffline(this.info.loadedUrls);
  }

  #onMessage(msg: FromWorker) {
    if (msg.type === 'run-step') return this.#queueStep(msg.runId, msg.step);
    if (msg.type !== 'progress' && msg.type !== 'status') this.#flush(); // keeps the messages' order
    switch (msg.type) {
      case 'status':
        this.phase = msg.phase;
        this.status = msg.text;
        break;
      case 'progress':
        this.progress = { file: msg.file, loaded: msg.loaded, total: msg.total, fromCache: msg.fromCache };
        break;
      case 'notice':
        this.notices = [...this.notices, { level: msg.level, text: msg.text }];
        break;
      case 'ready':
        setTimeout(() => this.#keepForOffline(), 15_000);
        this.bundlesChanged++;
        this.info = msg.info;
        window.__engineInfo = msg.info;
        window.__engineStats = () => this.stats();
        window.__engineBench = (options) => this.bench(options);
        this.state = 'ready';
        for (const w of this.#readyWaiters.splice(0)) w.resolve(msg.info);
        this.#pump();
        break;
      case 'engine-changed':
        this.info = msg.info;
        window.__engineInfo = msg.info;
        break;
      case 'open-progress':
        this.opening = { text: msg.text, loaded: msg.loaded, total: msg.total };
        break;
      case 'open-failed':
        this.opening = null;
        this.openError = msg.text;
        this.bundlesChanged++;
        break;
      case 'bundle-switched':
        // the old model's runs do not belong to the new one
        this.sideQueue = [];
        this.sideRuns = {};
        this.trace = null;
        this.runError = null;
        this.opening = null;
        this.info = msg.info;
        this.settings = { ...this.settings, bundleUrl: msg.info.bundle.url };
        window.__engineInfo = msg.info;
        this.bundlesChanged++;
        writeBundle(msg.info.bundle.url);
        break;
      case 'fatal':
        this.#fail(msg.text);
        break;
      case 'run-settled':
        if (this.inFlight === msg.runId) this.inFlight = null;
        this.#keepForOffline();
        break;
      case 'run-start': {
        const { type: _type, ...plan } = msg;
        const fresh: Trace = {
          ...plan,
          steps: [],
          embeddings: null,
          finalLatent: null,
          image: null,
          timingsMs: {},
          backend: '',
          cancelled: false,
          done: false,
        };
        const key = this.#sideIds.get(msg.runId);
        if (key !== undefined) this.sideRuns = { ...this.sideRuns, [key]: fresh };
        else {
          this.trace = fresh;
          this.inFlight = msg.runId;
        }
        break;
      }
      case 'run-done':
        if (
          this.#side(msg.runId, (t) => {
            const { type: _type, runId: _runId, ...rest } = msg;
            return { ...t, ...rest, done: true };
          })
        ) {
          this.sideRunning = null;
          this.state = 'ready';
          this.#pump();
          break;
        }
        if (this.trace?.runId === msg.runId) {
          const { type: _type, runId: _runId, ...rest } = msg;
          this.trace = { ...this.trace, ...rest, done: true };
          window.__lastTrace = this.trace;
        }
        this.state = 'ready';
        this.#pump();
        break;
      case 'stats': {
        const { type: _t, ...figures } = msg;
        this.#statsWaiter?.(figures);
        this.#statsWaiter = null;
        break;
      }
      case 'run-clip':
        if (this.trace?.runId === msg.runId) {
          this.trace = { ...this.trace, clip: msg.clip };
          window.__lastTrace = this.trace;
        }
        break;
      case 'run-image':
        if (this.#side(msg.runId, (t) => ({ ...t, steps: t.steps.map((s) => (s.index === msg.index ? { ...s, image: msg.image } : s)) })))
          break;
        if (this.trace?.runId === msg.runId) {
          const steps = this.trace.steps.map((s) => (s.index === msg.index ? { ...s, image: msg.image } : s));
          this.trace = { ...this.trace, steps };
          if (this.trace.done) window.__lastTrace = this.trace;
          this.#pump(); // the run may have settled: the queue goes on
        }
        break;
      case 'run-invalid':
      case 'run-error':
        if (this.#sideIds.has(msg.runId)) {
          const key = this.#sideIds.get(msg.runId)!;
          this.notices = [...this.notices, { level: 'warning', text: `${key}: ${msg.text}` }];
          this.#side(msg.runId, (t) => (t.done ? t : { ...t, done: true, cancelled: true }));
          this.sideRunning = null;
        } else {
          this.runError = msg.text;
          // a run that failed part-way shows as stopped where it failed, not as running for ever
          if (this.trace?.runId === msg.runId && !this.trace.done) this.trace = { ...this.trace, done: true, cancelled: true };
        }
        this.state = 'ready';
        this.#pump();
        break;
      case 'bench-progress':
        this.benchProgress = { text: msg.text, done: msg.done, total: msg.total };
        break;
      case 'bench-done':
      case 'bench-error': {
        const pending = this.#bench;
        this.#bench = null;
        this.state = 'ready';
        if (msg.type === 'bench-done') pending?.resolve(msg.result);
        else pending?.reject(new Error(msg.text));
        break;
      }
    }
  }
}
