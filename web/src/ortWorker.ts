// onnxruntime-web (WASM) in a worker of its own, started by the engine worker (lib/remoteOrt.ts is its
// other half). Why: on a first visit Python's restore and the sessions' creation are each ~1 s of one
// thread's work; in one worker they ran one after the other, here they run side by side on two cores.
// Messages are lib/remoteOrt.ts's OrtRequest / OrtReply; tensors travel as {type, dims, data}.
import { configureOrt, startWithWarmup } from './lib/ortSetup';
import { compileFromCache } from './lib/wasmCache';
import type { OrtReply, OrtRequest, WireTensor } from './lib/remoteOrt';

declare const self: DedicatedWorkerGlobalScope;

type Ort = typeof import('onnxruntime-web/wasm');
type Session = Awaited<ReturnType<Ort['InferenceSession']['create']>>;

let ort: Ort | null = null;
const sessions = new Map<number, Session>();

function reply(msg: OrtReply, transfer: Transferable[] = []) {
  self.postMessage(msg, transfer);
}

/** One line, as the engine worker words errors (an OOM's text is kept whole: it is recognised there). */
const messageOf = (e: unknown) => (e instanceof Error ? e.message : String(e));

async function handle(msg: OrtRequest): Promise<void> {
  if (msg.op === 'start') {
    if (msg.wasmCache && 'caches' in self) self.fetch = compileFromCache(self.fetch.bind(self), msg.base, msg.wasmCache, caches);
    ort = configureOrt(await import('onnxruntime-web/wasm'), msg.base, msg.threads);
    await startWithWarmup(ort, 'wasm');
    return reply({ op: 'started', seq: msg.seq, version: ort.env.versions.web ?? '?', ms: performance.now() });
  }
  if (!ort) throw new Error('onnxruntime-web has not started');
  if (msg.op === 'create') {
    const t0 = performance.now();
    const session = await ort.InferenceSession.create(msg.bytes, msg.options as Parameters<Ort['InferenceSession']['create']>[1]);
    sessions.set(msg.id, session);
    const ms = performance.now() - t0;
    return reply({ op: 'created', seq: msg.seq, inputNames: [...session.inputNames], outputNames: [...session.outputNames], ms });
  }
  if (msg.op === 'run') {
    const session = sessions.get(msg.id);
    if (!session) throw new Error('this onnxruntime-web session was released');
    const feeds = Object.fromEntries(
      Object.entries(msg.feeds).map(([k, t]) => [k, new ort!.Tensor(t.type as 'float32', t.data as Float32Array, t.dims)]),
    );
    const out = await session.run(feeds);
    const outputs: Record<string, WireTensor> = {};
    const transfer = new Set<ArrayBuffer>();
    for (const [k, t] of Object.entries(out)) {
      const data = t.data as WireTensor['data'];
      outputs[k] = { type: t.type, dims: [...t.dims], data };
      // moved when the array owns its buffer (ORT copies outputs out of its memory); copied otherwise
      const own = data.buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === data.buffer.byteLength;
      if (own) transfer.add(data.buffer as ArrayBuffer);
    }
    return reply({ op: 'ran', seq: msg.seq, outputs }, [...transfer]);
  }
  if (msg.op === 'release') {
    const session = sessions.get(msg.id);
    sessions.delete(msg.id);
    await session?.release();
    return reply({ op: 'released', seq: msg.seq });
  }
  if (msg.op === 'urls') {
    const urls = performance.getEntriesByType('resource').map((e) => e.name);
    return reply({ op: 'urls', seq: msg.seq, urls: [self.location.href, ...urls] });
  }
}

self.onmessage = (e: MessageEvent<OrtRequest>) => {
  const msg = e.data;
  handle(msg).catch((err) => reply({ op: 'error', seq: msg.seq, text: messageOf(err) }));
};
