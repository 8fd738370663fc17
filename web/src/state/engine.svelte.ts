// The page's side of the engine worker: starts it, turns its messages into reactive state and a
// growing Trace, and restarts it when the provider settings change (ORT's provider and thread
// count are fixed once its wasm has started).
import type { EngineInfo, FromWorker, Phase, ProviderChoice, RequestMsg, ToWorker, Trace } from './protocol';

export interface EngineSettings {
  bundleUrl: string;
  provider: ProviderChoice;
  /** 0: automatic, min(hardwareConcurrency, 4). */
  threads: number;
}

export interface Notice {
  level: 'info' | 'warning';
  text: string;
}

declare global {
  interface Window {
    /** Debug hook for tests and the console: the last finished (or stopped) run's Trace. */
    __lastTrace?: Trace;
    /** Debug hook: what the engine runs on (provider, reason, timings). */
    __engineInfo?: EngineInfo;
  }
}

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

  #worker: Worker | null = null;
  #stopFlag: SharedArrayBuffer | null = null;
  #nextRun = 1;

  start(settings: EngineSettings) {
    this.#worker?.terminate();
    this.settings = settings;
    this.state = 'loading';
    this.fatal = null;
    this.info = null;
    this.progress = null;
    this.notices = [];
    this.#stopFlag = globalThis.crossOriginIsolated ? new SharedArrayBuffer(4) : null;
    const worker = new Worker(new URL('../worker.ts', import.meta.url), { type: 'module', name: 'engine' });
    worker.onmessage = (e: MessageEvent<FromWorker>) => this.#onMessage(e.data);
    worker.onerror = (e) => {
      this.fatal = `the engine worker failed: ${e.message || 'unknown error'}`;
      this.state = 'error';
    };
    this.#worker = worker;
    // resolved here: relative to the page, not to the worker's script; a folder URL ends in '/'
    const bundleUrl = new URL(settings.bundleUrl, location.href);
    if (!bundleUrl.pathname.endsWith('/')) bundleUrl.pathname += '/';
    this.#send({ type: 'init', bundleUrl: bundleUrl.href, provider: settings.provider, threads: settings.threads, stopFlag: this.#stopFlag });
  }

  generate(request: RequestMsg) {
    if (this.state !== 'ready') return;
    this.runError = null;
    this.state = 'running';
    // cleared here, before the message, so a Stop pressed right away is never lost
    if (this.#stopFlag) Atomics.store(new Int32Array(this.#stopFlag), 0, 0);
    this.#send({ type: 'generate', runId: this.#nextRun++, request: $state.snapshot(request) as RequestMsg });
  }

  stop() {
    if (this.#stopFlag) Atomics.store(new Int32Array(this.#stopFlag), 0, 1);
    this.#send({ type: 'stop' });
  }

  #send(msg: ToWorker) {
    this.#worker?.postMessage(msg);
  }

  #onMessage(msg: FromWorker) {
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
        this.state = 'ready';
        break;
      case 'fatal':
        this.fatal = msg.text;
        this.state = 'error';
        break;
      case 'run-start':
        this.trace = {
          runId: msg.runId, request: msg.request, timesteps: msg.timesteps, tokens: msg.tokens, negativeTokens: msg.negativeTokens,
          steps: [], embeddings: null, finalLatent: null, image: null, timingsMs: {}, backend: '', cancelled: false, done: false,
        };
        break;
      case 'run-step':
        if (this.trace?.runId === msg.runId) this.trace = { ...this.trace, steps: [...this.trace.steps, msg.step] };
        break;
      case 'run-done':
        if (this.trace?.runId === msg.runId) {
          const { type: _type, runId: _runId, ...rest } = msg;
          this.trace = { ...this.trace, ...rest, done: true };
          window.__lastTrace = this.trace;
        }
        this.state = 'ready';
        break;
      case 'run-invalid':
      case 'run-error':
        this.runError = msg.text;
        this.state = 'ready';
        break;
    }
  }
}
