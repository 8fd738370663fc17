// The engine worker's face of onnxruntime-web when ORT starts in a worker of its own (ortWorker.ts):
// the small part of ORT's API that runtime/web.py and the bench use (env, InferenceSession.create,
// session.run / release, Tensor), answered by messages. Sessions can be made before Python asks for
// them (`premake`): the bundle is downloaded before Python has restored, so their ~1 s of work runs
// beside Python's instead of after it. Python's own create() then takes the premade session when it
// asks for the same bytes with the same options, and makes a new one otherwise.
// Once the page is idle the sessions move into the engine worker (`moveHere`): a message each way per
// call cost a 1-thread run 2.6–7% (the scheduler's small graphs are a call each).

export type WireData = Float32Array | Int32Array | BigInt64Array | Uint8Array | Int8Array | Uint16Array | Float64Array;
export type WireTensor = { type: string; dims: number[]; data: WireData };

export type OrtRequest = { seq: number } & (
  | { op: 'start'; base: string; threads: number; wasmCache?: string }
  | { op: 'create'; id: number; bytes: Uint8Array; options: unknown }
  | { op: 'run'; id: number; feeds: Record<string, WireTensor> }
  | { op: 'release'; id: number }
  | { op: 'urls' }
);

export type OrtReply = { seq: number } & (
  | { op: 'started'; version: string; ms: number }
  | { op: 'created'; inputNames: string[]; outputNames: string[]; ms: number }
  | { op: 'ran'; outputs: Record<string, WireTensor> }
  | { op: 'released' }
  | { op: 'urls'; urls: string[] }
  | { op: 'error'; text: string }
);

type Port = Pick<Worker, 'postMessage'> & { onmessage: ((e: MessageEvent<OrtReply>) => void) | null };

/** The part of onnxruntime-web's module that sessions are moved to (the engine worker's own ORT). */
export interface LocalOrt {
  Tensor: new (type: 'float32', data: Float32Array, dims: readonly number[]) => unknown;
  InferenceSession: { create(bytes: Uint8Array, options?: never): Promise<LocalSession> };
}
export interface LocalSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: Record<string, unknown>): Promise<Record<string, unknown>>;
  release(): Promise<void>;
}

/** A CPU tensor as ORT's Tensor looks to its callers; its data is sent along with each run. */
export class RemoteTensor {
  readonly location = 'cpu';
  constructor(
    readonly type: string,
    readonly data: WireData,
    readonly dims: readonly number[],
  ) {}
  getData(): Promise<WireData> {
    return Promise.resolve(this.data);
  }
  dispose(): void {}
}

export class RemoteSession {
  /** The same model made in the engine worker's own ORT (moveHere); every call goes there once set. */
  local: LocalSession | null = null;
  released = false;
  /** How long the ORT worker took to make it (EngineInfo.ort.madeMs: where a first visit's time goes). */
  madeMs = 0;

  constructor(
    private readonly ort: RemoteOrt,
    readonly id: number,
    readonly inputNames: string[],
    readonly outputNames: string[],
    readonly made: { bytes: Uint8Array; options: unknown },
  ) {}

  async run(feeds: Record<string, RemoteTensor>): Promise<Record<string, RemoteTensor>> {
    if (this.local) return (await this.local.run(this.ort.localFeeds(feeds))) as Record<string, RemoteTensor>;
    const wire: Record<string, WireTensor> = {};
    for (const [k, t] of Object.entries(feeds)) wire[k] = { type: t.type, dims: [...t.dims], data: t.data };
    const reply = await this.ort.call({ op: 'run', id: this.id, feeds: wire }); // copied: a feed may be used again
    const { outputs } = reply as Extract<OrtReply, { op: 'ran' }>;
    return Object.fromEntries(Object.entries(outputs).map(([k, t]) => [k, new RemoteTensor(t.type, t.data, t.dims)]));
  }

  async release(): Promise<void> {
    this.released = true;
    this.ort.forget(this);
    if (this.local) return this.local.release();
    await this.ort.call({ op: 'release', id: this.id });
  }
}

/** What decides whether a premade session is the one asked for: the options with every byte array
 * named by its length (the model's own bytes are compared by identity). */
export function optionsKey(options: unknown): string {
  return JSON.stringify(options ?? {}, (_k, v: unknown) => {
    if (ArrayBuffer.isView(v)) return `bytes:${v.byteLength}`;
    if (v && typeof v === 'object' && !Array.isArray(v))
      return Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))); // key order is not meaning
    return v;
  });
}

type Pending = { resolve: (r: OrtReply) => void; reject: (e: Error) => void };

export class RemoteOrt {
  readonly env: { versions: { web?: string }; wasm: { numThreads: number } };
  readonly Tensor = RemoteTensor;
  readonly InferenceSession = { create: (bytes: Uint8Array, options?: unknown) => this.create(bytes, options) };
  /** How many of Python's sessions were premade ones (EngineInfo reports it; a test holds it). */
  premadeUsed = 0;
  /** The ORT worker's start: ms from its creation to ORT's wasm and threads running. */
  startMs = 0;
  private seq = 0;
  private nextId = 1;
  private local: LocalOrt | null = null;
  private readonly live = new Set<RemoteSession>();
  private readonly pending = new Map<number, Pending>();
  private readonly premade = new Map<Uint8Array, { key: string; session: Promise<RemoteSession> }>();

  private constructor(
    private readonly port: Port,
    threads: number,
  ) {
    this.env = { versions: {}, wasm: { numThreads: threads } };
    port.onmessage = (e) => {
      const waiting = this.pending.get(e.data.seq);
      if (!waiting) return;
      this.pending.delete(e.data.seq);
      if (e.data.op === 'error') waiting.reject(new Error(e.data.text));
      else waiting.resolve(e.data);
    };
  }

  /** Start ORT in `port` (its WebAssembly and threads, through a one-node warm-up graph). */
  static async start(port: Port, options: { base: string; threads: number; wasmCache?: string }): Promise<RemoteOrt> {
    const ort = new RemoteOrt(port, options.threads);
    const started = (await ort.call({ op: 'start', ...options })) as Extract<OrtReply, { op: 'started' }>;
    ort.env.versions.web = started.version;
    ort.startMs = started.ms;
    return ort;
  }

  /** Every request still waiting fails with `text` (the worker itself failed). */
  failAll(text: string): void {
    for (const p of this.pending.values()) p.reject(new Error(text));
    this.pending.clear();
  }

  call(request: DistributiveOmit<OrtRequest, 'seq'>): Promise<OrtReply> {
    const seq = ++this.seq;
    return new Promise<OrtReply>((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.port.postMessage({ ...request, seq } as OrtRequest);
    });
  }

  /** Start making a session now; create(bytes, options) takes it later. */
  premake(bytes: Uint8Array, options: unknown): Promise<RemoteSession> {
    const session = this.make(bytes, options);
    session.catch(() => {}); // reported when Python asks for it (its create makes it again)
    this.premade.set(bytes, { key: optionsKey(options), session });
    return session;
  }

  async create(bytes: Uint8Array, options?: unknown): Promise<RemoteSession> {
    if (this.local) return this.adopt(this.nextId++, bytes, options, await this.local.InferenceSession.create(bytes, options as never));
    const early = this.premade.get(bytes);
    this.premade.delete(bytes);
    if (early && early.key === optionsKey(options)) {
      try {
        const session = await early.session;
        this.premadeUsed++;
        return session;
      } catch {
        /* made again below: its error is the one the reader sees */
      }
    } else if (early) void early.session.then((s) => s.release()).catch(() => {});
    return this.make(bytes, options);
  }

  /** Premade sessions nobody asked for (a component Python loads later, or never) are released. */
  async dropUnused(): Promise<void> {
    const left = [...this.premade.values()];
    this.premade.clear();
    await Promise.all(left.map((p) => p.session.then((s) => s.release()).catch(() => {})));
  }

  /** The addresses the ORT worker fetched (its script, ORT's glue and WebAssembly): kept for offline use. */
  async urls(): Promise<string[]> {
    return ((await this.call({ op: 'urls' })) as Extract<OrtReply, { op: 'urls' }>).urls;
  }

  forget(session: RemoteSession): void {
    this.live.delete(session);
  }

  /** Where calls go now: the ORT worker, or (after moveHere) this worker's own ORT. */
  get where(): 'own' | 'engine' {
    return this.local ? 'engine' : 'own';
  }

  /** Make every live session again in `local` (this worker's own ORT), then send every call there;
   * resolves once nothing waits on the ORT worker any more, so the caller may end it. A session that
   * fails to move keeps the whole set where it was (nothing half-moved). Runs may go on meanwhile: a
   * session the ORT worker makes during the move (CLIP's image tower after a run) is moved after it. */
  async moveHere(local: LocalOrt): Promise<void> {
    if (this.local) return;
    const made = new Map<RemoteSession, LocalSession>();
    const left = () => [...this.live].filter((s) => !s.released && !s.local && !made.has(s));
    try {
      for (let todo = left(); todo.length; todo = left())
        for (const s of todo) made.set(s, await local.InferenceSession.create(s.made.bytes, s.made.options as never));
    } catch (e) {
      await Promise.all([...made.values()].map((m) => m.release().catch(() => {})));
      throw e;
    }
    for (const [s, m] of made) {
      if (s.released)
        void m.release().catch(() => {}); // released while its copy was being made
      else s.local = m;
    }
    this.local = local; // from here every create() is made here too
    for (;;) {
      while (this.pending.size) await new Promise((r) => setTimeout(r, 10)); // a call already sent finishes there
      const late = left(); // made by the ORT worker after the sessions above were
      if (!late.length) return;
      for (const s of late) s.local = await local.InferenceSession.create(s.made.bytes, s.made.options as never);
    }
  }

  /** Feeds for a session in this worker: ORT there takes only its own Tensor class (wrapped, not copied). */
  localFeeds(feeds: Record<string, unknown>): Record<string, unknown> {
    const T = this.local!.Tensor;
    return Object.fromEntries(
      Object.entries(feeds).map(([k, t]) => [
        k,
        t instanceof RemoteTensor ? new T(t.type as 'float32', t.data as Float32Array, t.dims) : t,
      ]),
    );
  }

  private adopt(id: number, bytes: Uint8Array, options: unknown, local: LocalSession | null, names?: OrtReply): RemoteSession {
    const io = local ?? (names as Extract<OrtReply, { op: 'created' }>);
    const session = new RemoteSession(this, id, [...io.inputNames], [...io.outputNames], { bytes, options });
    session.local = local;
    this.live.add(session);
    return session;
  }

  private async make(bytes: Uint8Array, options: unknown): Promise<RemoteSession> {
    const id = this.nextId++;
    const made = await this.call({ op: 'create', id, bytes, options });
    const session = this.adopt(id, bytes, options, null, made);
    session.madeMs = (made as Extract<OrtReply, { op: 'created' }>).ms;
    return session;
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
