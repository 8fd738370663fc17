// The page's side of the engine worker, and the one place its messages are read: starts it, turns
// its messages into reactive state and a growing Trace, restarts it when the provider settings
// change (ORT's provider and thread count are fixed once its wasm has started), and runs the bench
// view's benchmark (`bench()`), so the explainer and the bench load the bundle the same way.
import type {
  BenchOptions,
  EngineInfo,
  FromWorker,
  Phase,
  ProviderChoice,
  RequestMsg,
  StepMsg,
  ToWorker,
  Trace,
  WorkerBenchResult,
} from '../lib/protocol';

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
    __engineStats?: () => Promise<{ heapBytes: number; pyObjects: number; jsProxies: number }>;
    /** Debug hook: the compare view's second run (growing, then done). */
    __compareTrace?: Trace;
    /** Debug hook: what the engine runs on (provider, reason, timings). */
    __engineInfo?: EngineInfo;
  }
}

type Waiter<T> = { resolve: (v: T) => void; reject: (e: Error) => void };

export class EngineClient {
  state = $state<'loading' | 'ready' | 'running' | 'error'>('loading');
  phase = $state<Phase>('bundle');
  status = $state('');
  progress = $state.raw<{ file: string; loaded: number; total: number; fromCache: boolean } | null>(null);
  notices = $state<Notice[]>([]);
  info = $state.raw<EngineInfo | null>(null);
  fatal = $state<string | null>(null);
  /** The current or last run; replaced (not mutated) per message so tensors are not proxied. */
  trace = $state.raw<Trace | null>(null);
  runError = $state<string | null>(null);
  settings = $state.raw<EngineSettings>({ bundleUrl: '/bundle/', provider: 'auto', threads: 0 });
  /** Runs the explainer asks for beside the reader's (other guidance scales, other seeds), by key;
   * queued, run one at a time when the engine is free, and kept for the session. */
  sideRuns = $state.raw<Record<string, Trace>>({});
  /** The benchmark's progress while `bench()` runs. */
  benchProgress = $state.raw<{ text: string; done: number; total: number } | null>(null);

  #worker: Worker | null = null;
  #stopFlag: SharedArrayBuffer | null = null;
  #nextRun = 1;
  #readyWaiters: Waiter<EngineInfo>[] = [];
  #bench: Waiter<WorkerBenchResult> | null = null;
  #sideQueue: { key: string; request: RequestMsg }[] = [];
  #sideIds = new Map<number, string>();
  #statsWaiter: ((s: { heapBytes: number; pyObjects: number; jsProxies: number }) => void) | null = null;

  start(settings: EngineSettings) {
    this.#worker?.terminate();
    this.#failPending('the engine was restarted');
    this.#pendingSteps.clear();
    this.settings = settings;
    this.state = 'loading';
    this.fatal = null;
    this.info = null;
    this.progress = null;
    this.notices = [];
    this.#stopFlag = globalThis.crossOriginIsolated ? new SharedArrayBuffer(4) : null;
    const worker = new Worker(new URL('../worker.ts', import.meta.url), { type: 'module', name: 'engine' });
    worker.onmessage = (e: MessageEvent<FromWorker>) => this.#onMessage(e.data);
    worker.onerror = (e) => this.#fail(`the engine worker failed: ${e.message || 'unknown error'}`);
    this.#worker = worker;
    // resolved here: relative to the page, not to the worker's script; a folder URL ends in '/'
    const bundleUrl = new URL(settings.bundleUrl, location.href);
    if (!bundleUrl.pathname.endsWith('/')) bundleUrl.pathname += '/';
    this.#send({
      type: 'init',
      bundleUrl: bundleUrl.href,
      provider: settings.provider,
      threads: settings.threads,
      stopFlag: this.#stopFlag,
      ...(settings.bench ? { bench: true } : {}),
    });
  }

  /** Resolves with the engine's info once it is ready; rejects with the reason it could not start. */
  whenReady(): Promise<EngineInfo> {
    if (this.info && this.state !== 'loading' && this.state !== 'error') return Promise.resolve(this.info);
    if (this.state === 'error') return Promise.reject(new Error(this.fatal ?? 'the engine could not be started'));
    return new Promise((resolve, reject) => this.#readyWaiters.push({ resolve, reject }));
  }

  generate(request: RequestMsg) {
    if (this.state !== 'ready') return;
    this.runError = null;
    this.state = 'running';
    // cleared here, before the message, so a Stop pressed right away is never lost
    if (this.#stopFlag) Atomics.store(new Int32Array(this.#stopFlag), 0, 0);
    this.#send({ type: 'generate', runId: this.#nextRun++, request: $state.snapshot(request) as RequestMsg });
  }

  /** Queue a run for a view (kept under `key` for the session); nothing happens if it ran or waits. */
  runSide(key: string, request: RequestMsg) {
    if ((this.sideRuns[key] && !this.sideRuns[key].cancelled) || this.#sideQueue.some((q) => q.key === key)) return;
    this.#sideQueue.push({ key, request: $state.snapshot(request) as RequestMsg });
    this.#pump();
  }

  /** Whether a side run with this key is waiting or running. */
  sidePending(key: string): boolean {
    return this.#sideQueue.some((q) => q.key === key) || (!!this.sideRuns[key] && !this.sideRuns[key].done);
  }

  #pump() {
    if (this.state !== 'ready' || !this.#sideQueue.length) return;
    const { key, request } = this.#sideQueue.shift()!;
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
  stats(): Promise<{ heapBytes: number; pyObjects: number; jsProxies: number }> {
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
    this.#sideQueue = [];
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
   * (the page ran at ~3× the controller's time per step); views update at most every RENDER_EVERY_MS. */
  #pendingSteps = new Map<number, StepMsg[]>();
  #flushTimer: ReturnType<typeof setTimeout> | null = null;
  #lastFlush = 0;
  static RENDER_EVERY_MS = 150;

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
        this.info = msg.info;
        window.__engineInfo = msg.info;
        window.__engineStats = () => this.stats();
        this.state = 'ready';
        for (const w of this.#readyWaiters.splice(0)) w.resolve(msg.info);
        this.#pump();
        break;
      case 'engine-changed':
        this.info = msg.info;
        window.__engineInfo = msg.info;
        break;
      case 'fatal':
        this.#fail(msg.text);
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
        else this.trace = fresh;
        break;
      }
      case 'run-done':
        if (
          this.#side(msg.runId, (t) => {
            const { type: _type, runId: _runId, ...rest } = msg;
            return { ...t, ...rest, done: true };
          })
        ) {
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
        }
        break;
      case 'run-invalid':
      case 'run-error':
        if (this.#sideIds.has(msg.runId)) {
          const key = this.#sideIds.get(msg.runId)!;
          this.notices = [...this.notices, { level: 'warning', text: `${key}: ${msg.text}` }];
          this.#side(msg.runId, (t) => (t.done ? t : { ...t, done: true, cancelled: true }));
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
