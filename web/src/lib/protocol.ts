// The messages between the page (main thread) and the engine worker.
//
// Why these shapes matter: every explainer view is fed by a `Trace` assembled from these
// messages, so a new view (UMAP, attention maps, guidance arithmetic) only reads fields here and
// never asks the worker to compute anything. Field names mirror runtime/pipeline.py's Trace and
// StepTrace in camelCase; runtime/web.py builds them. Tensor data arrives as transferred
// ArrayBuffers (no copies between threads).

export type DType = 'float32' | 'uint8' | 'int64' | 'int32';

/** A tensor: row-major data of `dtype`; wrap `data` in the matching TypedArray to read it. */
export interface TensorMsg {
  dtype: DType;
  shape: number[];
  data: ArrayBuffer;
}

export interface TokensMsg {
  ids: number[];
  /** Readable tokens incl. <|startoftext|> / <|endoftext|>; no padding. */
  tokens: string[];
  length: number;
  truncated: boolean;
  /** Words that fell off CLIP's 77-token window. */
  droppedWords: string[];
}

export type SchedulerName = 'euler' | 'ddim' | 'dpmpp_2m' | 'pndm' | 'lms';
export const SCHEDULERS: SchedulerName[] = ['euler', 'ddim', 'dpmpp_2m', 'pndm', 'lms'];

export interface RequestMsg {
  prompt: string;
  negativePrompt: string;
  seed: number;
  guidance: number;
  steps: number;
  /** Empty: the bundle's default. */
  scheduler: SchedulerName | '';
  /** Decode the predicted image every N steps (0: never). */
  previewEvery: number;
}

export interface StepMsg {
  index: number;
  timestep: number;
  coefficients: Record<string, number>;
  /** x_t, the input of this step, [1, 4, h, w]. */
  latent: TensorMsg;
  noiseUncond: TensorMsg;
  noiseCond: TensorMsg;
  noiseGuided: TensorMsg;
  predX0: TensorMsg | null;
  /** The decoded predicted x0, uint8 [H, W, 4] RGBA. */
  image: TensorMsg | null;
  timingsMs: Record<string, number>;
}

/** Everything a view shows about one run; `steps` grows while the run goes on. */
export interface Trace {
  runId: number;
  request: RequestMsg;
  tokens: TokensMsg;
  negativeTokens: TokensMsg;
  /** The scheduler's timesteps, one per step (PNDM runs steps + 1). */
  timesteps: number[];
  steps: StepMsg[];
  /** Known when the run ends: */
  /** [2, 77, d]: unconditional (negative prompt) then conditional. */
  embeddings: TensorMsg | null;
  finalLatent: TensorMsg | null;
  /** The final image, uint8 [H, W, 4] RGBA; null when stopped. */
  image: TensorMsg | null;
  timingsMs: Record<string, number>;
  backend: string;
  cancelled: boolean;
  done: boolean;
}

export type Provider = 'webgpu' | 'wasm';
export type ProviderChoice = 'auto' | Provider;

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
  bundle: {
    name: string;
    url: string;
    imageSize: [number, number];
    latentSize: [number, number];
    defaultScheduler: SchedulerName;
    bytes: number;
    precision: string[];
    /** From the checkpoint's explainer.json (may be empty): what the model was trained to draw. */
    description: string;
    examples: string[];
    /** The guidance scale this model works best at (explainer.json), or null: the page starts there. */
    guidance: number | null;
  };
  timingsMs: {
    /** loadPyodide() until Python runs. */
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
}

// ---- the bench view (?bench): timings of this machine, see lib/bench.ts -------------------------

export interface BenchOptions {
  prompt: string;
  seed: number;
  guidance: number;
  steps: number;
  /** Measured runs; one more runs first as a warm-up and is excluded. */
  repeats: number;
  /** Empty: the bundle's default. */
  scheduler: SchedulerName | '';
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
  encodedBodySize: number;
  /** HTTP status where the browser reports it (304: revalidated, no body). */
  status: number | null;
}

export interface BenchResourceBytes {
  /** Response body bytes per category, from the Resource Timing entries this context saw. */
  bytes: Record<string, number>;
  count: Record<string, number>;
}

export interface WorkerBenchResult {
  controller: BenchControllerRun[];
  raw: BenchRawPass[];
  /** How many times the controller's run called each model session (UNet: once per step). */
  callsPerRun: Record<string, number>;
  backend: string;
  timestepsPerRun: number;
  /** WebAssembly memories seen in the worker; their size never shrinks, so it is their peak. */
  wasmMemories: BenchWasmMemory[];
  resources: BenchResourceEntry[];
}

export type ToWorker =
  | InitMsg
  | { type: 'generate'; runId: number; request: RequestMsg }
  | { type: 'stop' }
  | { type: 'bench'; options: BenchOptions };

export type Phase = 'pyodide' | 'runtime' | 'bundle' | 'sessions' | 'ready';

export type FromWorker =
  | { type: 'status'; phase: Phase; text: string }
  | { type: 'progress'; file: string; loaded: number; total: number; fromCache: boolean }
  | { type: 'notice'; level: 'info' | 'warning'; text: string }
  | { type: 'ready'; info: EngineInfo }
  | { type: 'fatal'; text: string }
  | { type: 'run-start'; runId: number; request: RequestMsg; timesteps: number[]; tokens: TokensMsg; negativeTokens: TokensMsg }
  | { type: 'run-step'; runId: number; step: StepMsg }
  | {
      type: 'run-done'; runId: number; timesteps: number[]; embeddings: TensorMsg | null; finalLatent: TensorMsg | null;
      image: TensorMsg | null; timingsMs: Record<string, number>; backend: string; cancelled: boolean;
    }
  /** A request the controller refused (Request.validate); nothing ran. */
  | { type: 'run-invalid'; runId: number; text: string }
  | { type: 'run-error'; runId: number; text: string }
  | { type: 'bench-progress'; text: string; done: number; total: number }
  | { type: 'bench-done'; result: WorkerBenchResult }
  | { type: 'bench-error'; text: string };
