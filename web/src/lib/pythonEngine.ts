// The one typed face of runtime/web.py's `Engine` as the worker calls it through Pyodide. Python
// objects arrive as PyProxy; this interface names the methods and what they take and give, so no
// call site casts a Python method by hand. Keep it in step with runtime/web.py.
import type { PyProxy } from 'pyodide/ffi';
import type { FromWorker, ModelFacts, RequestInfo, RequestMsg, SchedulerInfo, TensorMsg } from './protocol';

/** Engine.describe(): what the page's controls need from the runtime (a JS object; see runtime/web.py). */
export interface EngineDescription {
  schedulers: SchedulerInfo[];
  maxLength: number;
  vocabulary: Record<string, string[]>;
  model: ModelFacts;
  previewBudget: number;
  previews: number;
  hasClip: boolean;
  request: RequestInfo;
}

export type Post = (msg: FromWorker, transfer?: Transferable[]) => void;

/** runtime/web.py's Engine (a PyProxy: `destroy()` frees it on the JS side). */
export interface PythonEngine {
  /** Create every ORT session; resolves with ms per component. */
  load(progress: (name: string, i: number, n: number) => void): Promise<Record<string, number>>;
  describe(): EngineDescription | PyProxy;
  /** Run a request, posting run-start, run-step…, run-done, run-image… through `post`. */
  generate(
    runId: number,
    request: RequestMsg,
    post: Post,
    isStopped: () => boolean,
    yieldToEvents?: () => Promise<void>,
    previewBudget?: number,
    main?: boolean,
  ): Promise<void>;
  /** A step's x̂₀ decoded on demand, posted as run-image. */
  decode_step(runId: number, index: number, latent: TensorMsg, post: Post): Promise<void>;
  /** CLIP's scores of the last run's images against its prompt, the examples and `extra`. */
  post_clip(post: Post, extra: string[]): Promise<void>;
  close(): void;
  /** The WebBackend: `sessions` maps a component to its JS InferenceSession (the bench reads them). */
  readonly backend: PyProxy & { readonly sessions: PyProxy & { get(name: string): unknown } };
  destroy(): void;
}

/** runtime/web.py as a module. */
export interface WebModule {
  Engine(manifestJson: string, files: unknown, ort: unknown, provider: string, location: string): PythonEngine;
}

/** runtime.bundle's manifest check (raises with the schema's one-line message). */
export type CheckManifest = ((manifestJson: string) => unknown) & { destroy(): void };
