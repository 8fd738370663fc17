// The messages between the page (main thread) and the engine worker.
//
// Why these shapes matter: every explainer view is fed by a `Trace` assembled from these
// messages, so a new view (UMAP, attention maps, guidance arithmetic) only reads fields here and
// never asks the worker to compute anything. The schema is runtime/trace.py's dataclasses: a
// field's key here is its Python name in camelCase (tests/test_trace_schema.py compares
// RequestMsg, TokensMsg, PlanMsg, StepMsg and RunDoneMsg with them), and runtime/web.py builds
// the messages from them. Tensor data arrives as transferred ArrayBuffers (no copies between threads).

import type { ModelCard } from '../text/card';

export type DType = 'float32' | 'uint8' | 'int64' | 'int32';

/** A tensor: row-major data of `dtype`; wrap `data` in the matching TypedArray to read it. */
export interface TensorMsg {
  dtype: DType;
  shape: number[];
  data: ArrayBuffer;
}

/** runtime/tokenizer.py's Tokenized. */
export interface TokensMsg {
  ids: number[];
  /** Readable tokens incl. <|startoftext|> / <|endoftext|>; no padding. */
  tokens: string[];
  length: number;
  truncated: boolean;
  /** Words that fell off CLIP's token window (EngineInfo.bundle.maxLength). */
  droppedWords: string[];
}

/** A scheduler's key in runtime/schedulers.py's SCHEDULERS; the list is EngineInfo.bundle.schedulers. */
export type SchedulerName = string;

/** One scheduler the runtime offers (runtime/web.py's Engine.describe). */
export interface SchedulerInfo {
  name: SchedulerName;
  /** For readers, e.g. "DPM++ 2M". */
  label: string;
  /** The bundle's default. */
  isDefault: boolean;
}

/** runtime/trace.py's Request. */
export interface RequestMsg {
  prompt: string;
  negativePrompt: string;
  seed: number;
  guidance: number;
  steps: number;
  /** Empty: the bundle's default. */
  scheduler: SchedulerName;
  /** Decode the predicted image every N steps (0: never). */
  previewEvery: number;
}

/** runtime/trace.py's Plan: what a run will do, known before the first UNet call (the run-start message). */
export interface PlanMsg {
  /** The request as validated (an empty scheduler replaced by the bundle's default). */
  request: RequestMsg;
  tokens: TokensMsg;
  negativeTokens: TokensMsg;
  /** The scheduler's timesteps, one per step (PNDM runs steps + 1). */
  timesteps: number[];
  schedulerLabel: string;
  /** The scheduler's resolved config (diffusers' keys). */
  schedulerConfig: Record<string, number | string | boolean | null>;
  /** ᾱ over the training timesteps 0 … T−1: the noise schedule. */
  alphasCumprod: number[];
  /** σ per step for the σ-parameterised samplers (Euler, LMS, DPM-Solver++), else null. */
  sigmas: number[] | null;
  initNoiseSigma: number;
  /** Per prompt token: does the model card (explainer.json) list its word? null: the card lists no words. */
  tokenKnown: boolean[] | null;
  negativeTokenKnown: boolean[] | null;
}

/** runtime/trace.py's StepTrace (the run-step message). */
export interface StepMsg {
  index: number;
  timestep: number;
  coefficients: Record<string, number>;
  /** x_{t-1} as the linear combination the runtime ran: [coefficient, term] with term
   * x_t | eps | eps@k | x@k | other (eps@k, x@k: step k's guided noise / input). */
  update: [number, string][];
  /** The predicted x0 likewise (empty when the scheduler has none). */
  x0Update: [number, string][];
  /** x_t, the input of this step, [1, 4, h, w]. */
  latent: TensorMsg;
  noiseUncond: TensorMsg;
  noiseCond: TensorMsg;
  noiseGuided: TensorMsg;
  predX0: TensorMsg | null;
  /** The decoded predicted x0, uint8 [H, W, 4] RGBA; null until a run-image brings it (or never, without previews). */
  image: TensorMsg | null;
  timingsMs: Record<string, number>;
  /** [x, y]: the predicted x0 projected onto the bundle's cached UMAP (null without one). */
  umap: [number, number] | null;
  /** [tokens, h, w]: the UNet's cross-attention per prompt token, conditional branch (null without). */
  attention: TensorMsg | null;
}

/** runtime/trace.py's Trace fields that the run-done message carries (RUN_DONE_FIELDS). */
export interface RunDoneMsg {
  /** [2, maxLength, d]: unconditional (negative prompt) then conditional. */
  embeddings: TensorMsg | null;
  finalLatent: TensorMsg | null;
  /** The final image, uint8 [H, W, 4] RGBA; null when stopped. */
  image: TensorMsg | null;
  timingsMs: Record<string, number>;
  backend: string;
  cancelled: boolean;
}

/** Everything a view shows about one run: the plan (from run-start), `steps` growing while the run
 * goes on, and the RunDoneMsg fields (null / empty until the run ends). */
export interface Trace extends PlanMsg, RunDoneMsg {
  runId: number;
  steps: StepMsg[];
  done: boolean;
  /** CLIP's scores, after the run (bundles with a CLIP image tower only). */
  clip?: ClipMsg | null;
}

/** An inclusive range of a request field. */
export interface NumberRange {
  min: number;
  max: number;
}

/** runtime/trace.py's Request limits, as Engine.describe() gives them. */
export interface RequestLimits {
  seed: NumberRange;
  steps: NumberRange;
  guidance: NumberRange;
  promptChars: { max: number };
}

/** Engine.describe()["request"]: what a request may be, and what the form starts with. */
export interface RequestInfo {
  limits: RequestLimits;
  /** The request the form starts with; `guidance` is the model card's where it has one. */
  defaults: RequestMsg;
}

export type Provider = 'webgpu' | 'wasm';
export type ProviderChoice = 'auto' | Provider;

export interface ModelFacts {
  architecture: string;
  prediction_type: string;
  image_size: [number, number];
  latent_size: [number, number];
  latent_channels: number;
  vae_scaling_factor: number;
  vae_scale_factor: number;
  text_hidden_size: number;
  text_max_length: number;
}

export interface EngineInfo {
  provider: Provider;
  /** Why this provider runs, in a sentence for the page. */
  reason: string;
  threads: number;
  crossOriginIsolated: boolean;
  adapter: string | null;
  /** True when the WebGPU adapter is a software one (SwiftShader, llvmpipe); null without an adapter. */
  adapterSoftware?: boolean | null;
  ortVersion: string;
  pythonVersion: string;
  /** How Python started: from the memory snapshot a previous visit saved, from the one shipped with
   * the page (then saved for the next visit), or afresh (a throwaway worker then saves one for the
   * next visit once the page is idle). */
  pythonSnapshot: 'restored' | 'shipped' | 'fresh';
  bundle: {
    name: string;
    url: string;
    imageSize: [number, number];
    latentSize: [number, number];
    /** The schedulers the runtime offers (runtime/web.py's Engine.describe), the default marked. */
    schedulers: SchedulerInfo[];
    defaultScheduler: SchedulerName;
    /** CLIP's token window (the tokenizer's max_length, 77 for SD). */
    maxLength: number;
    /** The model card's vocabulary (objects, backgrounds, positions, sizes, words); empty for most checkpoints. */
    vocabulary: Record<string, string[]>;
    /** The manifest's model facts (sizes for the decoder view, the text encoder's width …). */
    model: ModelFacts;
    /** Share of the loop's time that decoding previews may add during a run (the rest follow the run). */
    previewBudget: number;
    /** About how many evenly spaced steps a page run decodes x̂₀ at (previewEvery from the step count);
     * any other step is decoded when the reader picks it. */
    previews: number;
    /** Whether the bundle ships CLIP's image tower (the clip view shows live numbers only then). */
    hasClip: boolean;
    bytes: number;
    precision: string[];
    /** From the checkpoint's explainer.json (may be empty): what the model was trained to draw. */
    description: string;
    examples: string[];
    /** The whole model card (the manifest's `about`, with its `facts` block), or null without one: the
     * views' sentences about the model come only from it (text/card.ts). */
    card?: ModelCard | null;
  };
  /** The runtime's request limits and defaults (runtime/web.py's Engine.describe()["request"]):
   * the page's only source for ranges, validation and the form's first values. */
  request: RequestInfo;
  timingsMs: {
    /** loadPyodide() until Python runs (from the saved snapshot on a warm visit). */
    pyodide: number;
    /** fetch + unpack + import of runtime.zip. */
    runtime: number;
    /** Manifest + every file (download or cache) + sha256 checks. */
    bundle: number;
    /** InferenceSession.create per component. */
    sessions: Record<string, number>;
    /** Worker start until ready. */
    total: number;
  };
  /** Bytes fetched over the network for the bundle in this load (0 when all came from the cache). */
  downloadedBytes: number;
  /** Every file the worker fetched while starting (Resource Timing): what the offline service worker keeps. */
  loadedUrls: string[];
  /** Where onnxruntime-web runs: a worker of its own (WASM; its sessions made while Python starts) or
   * the engine worker (WebGPU, the bench view); how many sessions Python found made already; and where a
   * first visit's time went there: the ORT worker's start (ms from its creation) and each premade
   * session's making (ms, by component). */
  ort?: { worker: 'own' | 'engine'; premade: number; startMs: number; madeMs: Record<string, number> };
}

/** The worker's memory figures for leak tests (Pyodide heap, Python objects, JS proxies) and where ORT runs. */
export interface EngineStats {
  heapBytes: number;
  pyObjects: number;
  jsProxies: number;
  ort?: 'own' | 'engine';
}

export interface InitMsg {
  type: 'init';
  bundleUrl: string;
  provider: ProviderChoice;
  /** 0: min(hardwareConcurrency, 4). */
  threads: number;
  /** Int32Array(1) over a SharedArrayBuffer: 1 = stop; null where the page is not isolated. */
  stopFlag: SharedArrayBuffer | null;
  /** The bench view: record WebAssembly memories as they are created, for peak-memory figures. */
  bench?: boolean;
  /** The offline worker's cache, on a visit it does not answer yet: keep the engine's WebAssembly there
   * and compile it from there (lib/wasmCache.ts). */
  wasmCache?: string;
}

// ---- the bench view (?bench): timings of this machine, see bench/bench.ts and bench/workerBench.ts -------------------------

export interface BenchOptions {
  prompt: string;
  seed: number;
  guidance: number;
  steps: number;
  /** Measured runs; one more runs first as a warm-up and is excluded. */
  repeats: number;
  /** Empty: the bundle's default. */
  scheduler: SchedulerName;
}

/** One generation through the Python controller (runtime/web.py's Engine.generate). */
export interface BenchControllerRun {
  warmup: boolean;
  /** Trace.timings_ms of the run, plus `wall` (Engine.generate incl. building the page's messages). */
  timingsMs: Record<string, number>;
  /** JS clock around the call to Engine.generate. */
  jsWallMs: number;
  /** Per step: Trace.steps[i].timings_ms (unet, ops, total). */
  steps: Record<string, number>[];
  /** component → ms of each session.run as JS saw it inside this run (the FFI's share is the rest). */
  sessionRunMs: Record<string, number[]>;
}

/** Raw onnxruntime-web: session.run from JS on the feeds the controller's warm-up run gave ORT. */
export interface BenchRawPass {
  warmup: boolean;
  /** component → ms of each session.run, in call order. */
  runsMs: Record<string, number[]>;
}

export interface BenchWasmMemory {
  /** Whose memory: 'pyodide' or 'onnxruntime' (by when it was created). */
  owner: string;
  bytes: number;
  shared: boolean;
}

/** A Resource Timing entry of the worker (the page's bench view sorts them into kinds). */
export interface BenchResourceEntry {
  url: string;
  transferSize: number;
  /** Body bytes as they came over the wire (compressed when the server sent Content-Encoding). */
  encodedBodySize: number;
  /** The same body after decoding. */
  decodedBodySize: number;
  /** HTTP status where the browser reports it (304: revalidated, no body). */
  status: number | null;
}

export interface BenchResourceBytes {
  /** Response body bytes per category, from the Resource Timing entries this context saw. */
  bytes: Record<string, number>;
  /** The same bodies decoded (what they are once decompressed). */
  decoded: Record<string, number>;
  count: Record<string, number>;
}

export interface WorkerBenchResult {
  controller: BenchControllerRun[];
  /** The same runs with the explainer's views on (previews within the runtime's budget). */
  viewsOn: BenchControllerRun[];
  raw: BenchRawPass[];
  /** How many times the controller's run called each model session (UNet: once per step). */
  callsPerRun: Record<string, number>;
  backend: string;
  timestepsPerRun: number;
  /** WebAssembly memories seen in the worker; their size never shrinks, so it is their peak. */
  wasmMemories: BenchWasmMemory[];
  resources: BenchResourceEntry[];
}

/** CLIP's similarities for a run (runtime/trace.py ClipScores): the final image and each decoded step image vs prompts. */
export interface ClipMsg {
  prompts: string[];
  /** One cosine similarity per prompt, or null when the run has no final image. */
  final: number[] | null;
  /** [step index, similarity per prompt] for each step with a decoded image. */
  steps: [number, number[]][];
  /** CLIP's temperature: softmax(logitScale · similarity) gives its "which prompt" probabilities. */
  logitScale: number;
}

export type ToWorker =
  | InitMsg
  | { type: 'clip'; prompts: string[] }
  /** Memory figures for leak tests (answered with a 'stats' message). */
  | { type: 'stats' }
  /** side: a run a view asked for (other scales, seeds, the compare prompt): not the reader's main run. */
  | { type: 'generate'; runId: number; request: RequestMsg; side?: boolean }
  | { type: 'stop' }
  | { type: 'bench'; options: BenchOptions }
  /** Decode a step's x̂₀ that the run did not preview (the reader picked that step): answered with run-image. */
  | { type: 'decode'; runId: number; index: number; latent: TensorMsg }
  /** Open another bundle (an http(s) folder URL, or a local folder's files by their path inside it);
   * the engine keeps the one it has until this one is checked and its sessions are made. */
  | { type: 'open-bundle'; bundleUrl: string; folder?: { path: string; file: File }[] };

export type Phase = 'pyodide' | 'runtime' | 'bundle' | 'sessions' | 'ready';

export type FromWorker =
  | { type: 'status'; phase: Phase; text: string }
  | { type: 'progress'; file: string; loaded: number; total: number; fromCache: boolean }
  | { type: 'notice'; level: 'info' | 'warning'; text: string }
  | { type: 'ready'; info: EngineInfo }
  /** The engine moved to another provider while ready (the WebGPU device was lost: now WASM). */
  | { type: 'engine-changed'; info: EngineInfo }
  | { type: 'fatal'; text: string }
  | ({ type: 'run-start'; runId: number } & PlanMsg)
  | { type: 'run-step'; runId: number; step: StepMsg }
  | ({ type: 'run-done'; runId: number } & RunDoneMsg)
  /** After run-done: a step's predicted image that was not decoded during the loop (its preview budget). */
  | { type: 'run-image'; runId: number; index: number; image: TensorMsg }
  /** A request the controller refused (Request.validate); nothing ran. */
  | { type: 'run-invalid'; runId: number; text: string }
  | { type: 'run-clip'; runId: number; clip: ClipMsg }
  /** The worker is done with this run: its steps, previews and CLIP scores are in (or will not come). */
  | { type: 'run-settled'; runId: number }
  | ({ type: 'stats' } & EngineStats)
  | { type: 'run-error'; runId: number; text: string }
  | { type: 'bench-progress'; text: string; done: number; total: number }
  | { type: 'bench-done'; result: WorkerBenchResult }
  | { type: 'bench-error'; text: string }
  /** Opening another bundle: what it does now and its bytes so far. */
  | { type: 'open-progress'; text: string; loaded: number; total: number }
  /** The bundle could not be opened (one line naming the file); the engine still has the old one. */
  | { type: 'open-failed'; text: string }
  /** The engine now runs the opened bundle. */
  | { type: 'bundle-switched'; info: EngineInfo };

// ---- data a view reads from the bundle (not from a run) -------------------------------------------

/** umap_bases.json as export/umap.py's build_umap writes it (keys as written, snake_case): the
 * reference cloud the UMAP view draws. Read by state/umapBases.ts; nothing else types this file. */
export interface UmapBases {
  format: string;
  version: number;
  representation: string;
  prompts: string[];
  seeds: number[];
  /** Steps per reference run (PNDM: one more than steps_requested). */
  steps: number;
  steps_requested: number;
  scheduler: string;
  guidance: number;
  points: UmapPoints;
  extent: { x: [number, number]; y: [number, number] };
  fit: UmapFit;
  projection: UmapProjection;
  thumbnails: UmapThumbnails | null;
  /** How the graph's placement compares with umap-learn's transform (null without held-out prompts). */
  agreement: Record<string, unknown> | null;
}

/** One entry per reference point, column-wise: position, and which prompt (index), seed and step. */
export interface UmapPoints {
  x: number[];
  y: number[];
  prompt: number[];
  seed: number[];
  step: number[];
}

export interface UmapFit {
  n_neighbors: number;
  min_dist: number;
  metric: string;
  random_state: number;
  umap_learn: string;
  seconds: number;
  generate_seconds: number;
}

export interface UmapProjection {
  graph: string;
  input: string;
  output: string;
  k: number;
  method: string;
  reference_inputs: string;
}

/** A sprite of each reference run's final image: `tile` px squares, `cols` a row, prompt-major then seed. */
export interface UmapThumbnails {
  file: string;
  tile: number;
  cols: number;
  order: string;
  what: string;
}
