// onnxruntime-web's settings and start, one copy for the two workers that host it (worker.ts, and
// ortWorker.ts on WASM).

type OrtModule = Pick<typeof import('onnxruntime-web/wasm'), 'env' | 'InferenceSession'>;

/** A one-node ONNX graph (Identity, 91 bytes): creating a session from it starts onnxruntime-web's
 * wasm and thread pool while Python starts, instead of after it. */
const WARMUP_MODEL =
  'CAgSE2RpZmZ1c2lvbi1leHBsYWluZXI6PAoQCgF4EgF5IghJZGVudGl0eRIGd2FybXVwWg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIECgIIAUIECgAQEQ==';

/** Where ORT's WebAssembly is served (the page's ort/ folder), its threads, errors only in the console. */
export function configureOrt<T extends OrtModule>(ort: T, base: string, threads: number): T {
  ort.env.wasm.wasmPaths = `${base}ort/`;
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = 'error';
  return ort;
}

/** Start ORT's WebAssembly and threads through the one-node graph, before the first real session. */
export async function startWithWarmup(ort: OrtModule, provider: 'wasm' | 'webgpu'): Promise<void> {
  const bytes = Uint8Array.from(atob(WARMUP_MODEL), (c) => c.charCodeAt(0));
  const session = await ort.InferenceSession.create(bytes, { executionProviders: [provider] });
  await session.release();
}
