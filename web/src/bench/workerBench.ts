// The bench view's timing code, worker side (imported by worker.ts; the page side is bench.ts).
// Two levels of timing, so a reader can see what limits speed: (a) the app's own path — Python's
// Engine.generate in runtime/web.py, whose Trace records each component's time — and (b) the same
// ORT sessions called straight from JS with the very feeds (a) gave them, no Pyodide in between.
// (a) − (b) is what the controller and the FFI cost.
import type { PythonEngine } from '../lib/pythonEngine';
import type {
  BenchControllerRun,
  BenchOptions,
  BenchRawPass,
  BenchResourceEntry,
  BenchWasmMemory,
  FromWorker,
  RequestMsg,
  WorkerBenchResult,
} from '../lib/protocol';

type OrtSession = { run(feeds: Record<string, unknown>): Promise<Record<string, { dispose?(): void }>> };
type OrtTensorLike = { type: string; dims: readonly number[]; getData(): Promise<ArrayLike<unknown> & { slice(): unknown }> };
type Feeds = Record<string, { type: string; dims: number[]; data: unknown }>;
/** The ORT module the sessions were made with (raw passes make their own tensors with it). */
export type OrtModule = { Tensor: new (type: 'float32', data: Float32Array, dims: readonly number[]) => unknown };

const BENCH_COMPONENTS = ['text_encoder', 'unet', 'vae_decoder'] as const;

// ---- WebAssembly memories: who made them and how big they grew -----------------------------------

const wasmMemories: { owner: string; memory: WebAssembly.Memory }[] = [];
let wasmOwner = 'pyodide';
let watching = false;

/** Memories created from now on belong to `owner` (the worker calls this once Pyodide's exists). */
export function setWasmOwner(owner: string) {
  wasmOwner = owner;
}

/** Record every WebAssembly.Memory created in this worker (made in JS, or exported by an instance).
 * A wasm memory only grows, so its size at the end is its peak. */
export function watchWasmMemories() {
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
    url: e.name,
    transferSize: e.transferSize,
    encodedBodySize: e.encodedBodySize,
    decodedBodySize: e.decodedBodySize,
    status: e.responseStatus ?? null,
  }));
}

// ---- the two levels ------------------------------------------------------------------------------

/** The JS InferenceSession that runtime/web.py's backend holds for a component. */
function sessionOf(engine: PythonEngine, name: string): OrtSession {
  const backend = engine.backend;
  const sessions = backend.sessions;
  try {
    const s = sessions.get(name);
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

type ControllerRun = Omit<BenchControllerRun, 'sessionRunMs'> & { timesteps: number; backend: string };

/** (a) One Engine.generate, its messages collected here instead of posted to the page. */
async function controllerRun(
  engine: PythonEngine,
  runId: number,
  options: BenchOptions,
  warmup: boolean,
  views = false,
): Promise<ControllerRun> {
  const steps: Record<string, number>[] = [];
  let timesteps = 0;
  let done: Extract<FromWorker, { type: 'run-done' }> | null = null;
  let refused = '';
  let doneAt = 0;
  const collect = (m: FromWorker) => {
    if (m.type === 'run-start') timesteps = m.timesteps.length;
    else if (m.type === 'run-step') steps.push({ ...m.step.timingsMs });
    else if (m.type === 'run-done') {
      done = m;
      doneAt = performance.now();
    } else if (m.type === 'run-invalid') refused = m.text;
  };
  const request: RequestMsg = {
    prompt: options.prompt,
    negativePrompt: '',
    seed: options.seed,
    guidance: options.guidance,
    steps: options.steps,
    // views on: what the explainer asks for (previews within the runtime's budget, the rest decoded
    // after run-done); off: the plain loop (no previews)
    scheduler: options.scheduler,
    previewEvery: views ? 1 : 0,
  };
  const t = performance.now();
  await engine.generate(runId, request, collect, () => false);
  const jsWallMs = (doneAt || performance.now()) - t; // until run-done: previews decoded later are off the run's path
  if (refused) throw new Error(`the bench request was refused: ${refused}`);
  const d = done as Extract<FromWorker, { type: 'run-done' }> | null;
  if (!d) throw new Error('the controller finished without a run-done message');
  return { warmup, timingsMs: { ...d.timingsMs }, jsWallMs, steps, timesteps, backend: d.backend };
}

/** The whole benchmark on a loaded engine: a warm-up and `repeats` measured rounds, each a
 * controller run (a) then a raw pass (b). Throws on any failure; the worker words it for the page. */
export async function runWorkerBench(
  engine: PythonEngine,
  ort: OrtModule,
  options: BenchOptions,
  progress: (text: string, done: number, total: number) => void,
): Promise<WorkerBenchResult> {
  const total = 2 * (options.repeats + 1);
  let done = 0;
  const sessions: Record<string, OrtSession> = Object.fromEntries(BENCH_COMPONENTS.map((n) => [n, sessionOf(engine, n)]));
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
    const viewsOn: BenchControllerRun[] = [];
    const raw: BenchRawPass[] = [];
    let timesteps = 0;
    let backend = '';
    // Interleaved — controller run r, then raw pass r — so both levels see the same state of the
    // machine (V8 tiers wasm up in the background for seconds; other load comes and goes).
    for (let r = 0; r <= options.repeats; r++) {
      const warmup = r === 0;
      // (a) through the Python controller
      progress(
        warmup ? 'warm-up run through the Python controller…' : `run ${r} of ${options.repeats} through the Python controller…`,
        done,
        total,
      );
      capture = warmup;
      sessionRunMs = {};
      const run = await controllerRun(engine, -1 - r, options, warmup);
      capture = false;
      timesteps = run.timesteps;
      backend = run.backend;
      controller.push({ warmup, timingsMs: run.timingsMs, jsWallMs: run.jsWallMs, steps: run.steps, sessionRunMs });
      // (a″) the same run with every view on (the explainer's previews); its session timings apart
      sessionRunMs = {};
      const on = await controllerRun(engine, -100 - r, options, warmup, true);
      viewsOn.push({ warmup, timingsMs: on.timingsMs, jsWallMs: on.jsWallMs, steps: on.steps, sessionRunMs: {} });
      done++;
      // (b) raw onnxruntime-web from JS: the same sessions and feeds, no Pyodide
      progress(
        warmup ? 'warm-up pass of raw onnxruntime-web session.run…' : `raw onnxruntime-web pass ${r} of ${options.repeats}…`,
        done,
        total,
      );
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
    progress('done', done, total);
    return {
      controller,
      viewsOn,
      raw,
      callsPerRun,
      timestepsPerRun: timesteps,
      backend,
      wasmMemories: wasmMemoryFigures(),
      resources: resourceEntries(),
    };
  } finally {
    for (const s of Object.values(sessions)) delete (s as { run?: unknown }).run; // back to the prototype's run
  }
}
