import { describe, expect, it } from 'vitest';
import { optionsKey, RemoteOrt, RemoteTensor, type LocalOrt, type OrtReply, type OrtRequest } from './remoteOrt';

/** ortWorker.ts's stand-in: answers each request a task later and records what it was asked. */
function fakeWorker(fail: Partial<Record<OrtRequest['op'], string>> = {}) {
  const asked: OrtRequest[] = [];
  const port = {
    onmessage: null as ((e: MessageEvent<OrtReply>) => void) | null,
    postMessage(msg: OrtRequest) {
      asked.push(msg);
      const answer = (r: OrtReply) => setTimeout(() => port.onmessage?.({ data: r } as MessageEvent<OrtReply>), 0);
      const text = fail[msg.op];
      if (text) return answer({ op: 'error', seq: msg.seq, text });
      if (msg.op === 'start') answer({ op: 'started', seq: msg.seq, version: '9.9.9', ms: 812 });
      else if (msg.op === 'create')
        answer({ op: 'created', seq: msg.seq, inputNames: ['x'], outputNames: ['y'], ms: msg.bytes.byteLength * 10 });
      else if (msg.op === 'release') answer({ op: 'released', seq: msg.seq });
      else if (msg.op === 'urls') answer({ op: 'urls', seq: msg.seq, urls: ['u'] });
      else if (msg.op === 'run') {
        const x = msg.feeds.x.data as Float32Array;
        answer({ op: 'ran', seq: msg.seq, outputs: { y: { type: 'float32', dims: msg.feeds.x.dims, data: x.map((v) => 2 * v) } } });
      }
    },
  };
  return { port, asked };
}

const start = (port: ReturnType<typeof fakeWorker>['port']) => RemoteOrt.start(port, { base: 'https://example.org/', threads: 2 });
const OPTIONS = { executionProviders: ['wasm'], graphOptimizationLevel: 'all', logSeverityLevel: 3 };

describe('onnxruntime-web in its own worker', () => {
  it('looks like ORT to runtime/web.py: version, threads, sessions, tensors', async () => {
    const { port } = fakeWorker();
    const ort = await start(port);
    expect(ort.env.versions.web).toBe('9.9.9');
    expect(ort.env.wasm.numThreads).toBe(2);
    const session = await ort.InferenceSession.create(new Uint8Array(8), OPTIONS);
    expect(session.outputNames).toEqual(['y']);
    const out = await session.run({ x: new ort.Tensor('float32', new Float32Array([1, 2, 3]), [1, 3]) });
    expect(out.y.location).toBe('cpu');
    expect(out.y.dims).toEqual([1, 3]);
    expect(Array.from((await out.y.getData()) as Float32Array)).toEqual([2, 4, 6]);
  });

  it('hands Python the session made early for the same bytes and options, whatever their key order', async () => {
    const { port, asked } = fakeWorker();
    const ort = await start(port);
    const unet = new Uint8Array(16);
    ort.premake(unet, OPTIONS);
    const reordered = { logSeverityLevel: 3, graphOptimizationLevel: 'all', executionProviders: ['wasm'] };
    await ort.InferenceSession.create(unet, reordered);
    expect(ort.premadeUsed).toBe(1);
    expect(asked.filter((m) => m.op === 'create')).toHaveLength(1);
  });

  it('says how long the ORT worker took to start and to make each session (where a first visit goes)', async () => {
    const { port } = fakeWorker();
    const ort = await start(port);
    expect(ort.startMs).toBe(812);
    const made = await ort.premake(new Uint8Array(16), OPTIONS);
    expect(made.madeMs).toBe(160);
  });

  it('makes a new session when the options differ, and releases the early one', async () => {
    const { port, asked } = fakeWorker();
    const ort = await start(port);
    const unet = new Uint8Array(16);
    ort.premake(unet, OPTIONS);
    await ort.InferenceSession.create(unet, { ...OPTIONS, graphOptimizationLevel: 'basic' });
    await new Promise((r) => setTimeout(r, 5));
    expect(ort.premadeUsed).toBe(0);
    expect(asked.filter((m) => m.op === 'create')).toHaveLength(2);
    expect(asked.filter((m) => m.op === 'release')).toHaveLength(1);
  });

  it('releases early sessions nobody asked for', async () => {
    const { port, asked } = fakeWorker();
    const ort = await start(port);
    ort.premake(new Uint8Array(3), OPTIONS);
    await ort.dropUnused();
    expect(asked.filter((m) => m.op === 'release')).toHaveLength(1);
  });

  it('gives the worker’s error text to the caller (an out-of-memory line is recognised from it)', async () => {
    const { port } = fakeWorker({ create: 'Aborted(OOM)' });
    const ort = await start(port);
    await expect(ort.InferenceSession.create(new Uint8Array(2), OPTIONS)).rejects.toThrow('Aborted(OOM)');
    ort.premake(new Uint8Array(2), OPTIONS); // an early failure is made again, and reported, when asked for
    await expect(ort.InferenceSession.create(new Uint8Array(2), OPTIONS)).rejects.toThrow('Aborted(OOM)');
  });

  it('names byte arrays by their length in the options key', () => {
    const a = optionsKey({ externalData: [{ path: 'w.bin', data: new Uint8Array(5) }] });
    expect(a).toBe(optionsKey({ externalData: [{ data: new Uint8Array(5), path: 'w.bin' }] }));
    expect(a).not.toBe(optionsKey({ externalData: [{ path: 'w.bin', data: new Uint8Array(6) }] }));
  });

  it('moves every live session into the engine worker’s own ORT, and calls go there after', async () => {
    const { port, asked } = fakeWorker();
    const ort = await start(port);
    const made: Uint8Array[] = [];
    class LocalTensor {
      constructor(
        readonly type: string,
        readonly data: Float32Array,
        readonly dims: readonly number[],
      ) {}
    }
    const local: LocalOrt = {
      Tensor: LocalTensor as unknown as LocalOrt['Tensor'],
      InferenceSession: {
        create: async (bytes: Uint8Array) => {
          made.push(bytes);
          return {
            inputNames: ['x'],
            outputNames: ['y'],
            run: async (feeds: Record<string, unknown>) => {
              const x = feeds.x as LocalTensor; // ORT in this worker takes only its own Tensor class
              if (!(x instanceof LocalTensor)) throw new Error('not a local tensor');
              return {
                y: new LocalTensor(
                  'float32',
                  x.data.map((v) => 3 * v),
                  x.dims,
                ),
              };
            },
            release: async () => {},
          };
        },
      },
    };
    const kept = new Uint8Array(8);
    const session = await ort.InferenceSession.create(kept, OPTIONS);
    const gone = await ort.InferenceSession.create(new Uint8Array(9), OPTIONS);
    await gone.release();
    expect(ort.where).toBe('own');
    await ort.moveHere(local);
    expect(ort.where).toBe('engine');
    expect(made).toEqual([kept]); // the released one is not made again
    const runsBefore = asked.filter((m) => m.op === 'run').length;
    const out = await session.run({ x: new RemoteTensor('float32', new Float32Array([1, 2]), [2]) });
    expect(Array.from((out.y as unknown as LocalTensor).data)).toEqual([3, 6]);
    expect(asked.filter((m) => m.op === 'run')).toHaveLength(runsBefore);
    await ort.InferenceSession.create(new Uint8Array(4), OPTIONS); // later sessions (CLIP's image tower) are made here too
    expect(made).toHaveLength(2);
  });

  it('keeps every session where it was when one cannot be moved', async () => {
    const { port } = fakeWorker();
    const ort = await start(port);
    const session = await ort.InferenceSession.create(new Uint8Array(8), OPTIONS);
    const failing: LocalOrt = {
      Tensor: RemoteTensor as unknown as LocalOrt['Tensor'],
      InferenceSession: { create: () => Promise.reject(new Error('Aborted(OOM)')) },
    };
    await expect(ort.moveHere(failing)).rejects.toThrow('Aborted(OOM)');
    expect(ort.where).toBe('own');
    const out = await session.run({ x: new RemoteTensor('float32', new Float32Array([1]), [1]) });
    expect(Array.from(out.y.data as Float32Array)).toEqual([2]);
  });

  it('also moves a session the ORT worker made while the others were being moved', async () => {
    const { port } = fakeWorker();
    const ort = await start(port);
    await ort.InferenceSession.create(new Uint8Array(8), OPTIONS);
    const box: { late?: Promise<unknown> } = {};
    const made: Uint8Array[] = [];
    const local: LocalOrt = {
      Tensor: RemoteTensor as unknown as LocalOrt['Tensor'],
      InferenceSession: {
        create: async (bytes: Uint8Array) => {
          made.push(bytes);
          box.late ??= ort.InferenceSession.create(new Uint8Array(5), OPTIONS); // a run ends and CLIP's tower is made
          await new Promise((r) => setTimeout(r, 5));
          return { inputNames: ['x'], outputNames: ['y'], run: async () => ({}), release: async () => {} };
        },
      },
    };
    await ort.moveHere(local);
    const session = (await box.late) as { local: unknown };
    expect(made.map((b) => b.length).sort()).toEqual([5, 8]);
    expect(session.local).not.toBeNull();
  });
});
