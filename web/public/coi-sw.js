// Cross-origin isolation for a static host that sends no special headers (GitHub Pages,
// `python -m http.server`, a plain bucket): this service worker answers the page's same-origin
// requests itself and adds COOP/COEP/CORP to the responses, so the page gets SharedArrayBuffer
// (WASM threads, the shared stop flag). `diffusion-explainer serve` sends those headers itself;
// there the page is already isolated and this worker only keeps files for offline (below).
//
// It also makes precompression work on hosts that do not negotiate encodings: for a file listed in
// precompressed.json (written by the build: `X.gz` beside `X`) it fetches `X.gz` and decodes it
// with DecompressionStream, so the wire carries gzip everywhere. A host that itself labels `X.gz`
// with `Content-Encoding: gzip` is decoded by the browser already; then the body is passed on.
//
// The first visit: the page loads without isolation, registers this worker, waits until it is
// active and reloads once (src/isolation.ts); the reload is answered by this worker, with the
// headers. Cross-origin requests are not touched (the page makes none).
//
// Offline: the page registers this worker on every host (also where the server sends the headers
// itself), and it keeps the app's own files — the page, assets/, pyodide/, ort/, runtime/, the web
// app manifest and icons — in the Cache API as they pass (network first, so a new build is used as
// soon as it is online; the kept copy when the network fails, or when the server says the file is
// unchanged). Only the files a visit used are kept (the WASM-only or the WebGPU build of
// onnxruntime-web, not both), and a copy is written again only when the server's validator (ETag /
// Last-Modified) changed. A first visit is never controlled by this worker (no `clients.claim()`):
// relaying its ~40 MB through this thread cost the first image CPU time it needs on a small machine.
// Once that visit's first run is done, the page tells this worker which files it and its engine
// worker loaded ('keep' message), and they are kept from the HTTP cache. On that first visit the engine
// worker has already put its WebAssembly here itself and compiled it from here (src/lib/wasmCache.ts),
// so the compiled code Chrome keeps beside a Cache API entry is there for the next visit. Bundles are not kept here:
// src/lib/bundleLoader.ts keeps them (checked by sha256) in their own cache.

const ISOLATION = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
};
// Browsers insist on these for module scripts and streaming WASM compilation; some hosts guess others.
const TYPES = {
  wasm: 'application/wasm', mjs: 'text/javascript', js: 'text/javascript', json: 'application/json',
  css: 'text/css', zip: 'application/zip', onnx: 'application/octet-stream', data: 'application/octet-stream',
  txt: 'text/plain; charset=utf-8', svg: 'image/svg+xml',
};

const SHELL_CACHE = 'diffusion-explainer-shell-v1';
const APP_FILE = /^(assets|pyodide|ort|runtime|icons)\/[^/]+$|^(index\.html|manifest\.webmanifest|favicon\.svg)$/;

self.addEventListener('install', () => self.skipWaiting());

const scope = () => new URL(self.registration.scope);

let gzipped = null; // Promise<Set<string>>: paths relative to the scope that have an `X.gz`
function precompressed() {
  gzipped ??= fetch(new URL('precompressed.json', scope()), { cache: 'no-cache' })
    .then((r) => (r.ok ? r.json() : { gzip: [] }))
    .then((j) => new Set(Array.isArray(j.gzip) ? j.gzip : []))
    .catch(() => new Set());
  return gzipped;
}

self.addEventListener('fetch', (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  if (req.cache === 'only-if-cached' && req.mode !== 'same-origin') return;
  event.respondWith(networkThenKept(req, url));
});

self.addEventListener('message', (event) => {
  if (event.data?.type === 'keep' && Array.isArray(event.data.urls))
    event.waitUntil(keepAll(event.data.urls).then(() => event.source?.postMessage({ type: 'kept' })));
});

/** The key an app file is kept under (the page itself under the scope's URL), or null: not kept. */
function shellKey(req, url) {
  const base = scope();
  if (req.mode === 'navigate') return base.href;
  if (req.method !== 'GET' || req.headers.has('range') || !url.pathname.startsWith(base.pathname)) return null;
  const rel = decodeURIComponent(url.pathname.slice(base.pathname.length));
  // Python's memory snapshot (31.5 MB decoded) is kept by the engine in its own cache: not twice
  return APP_FILE.test(rel) && !rel.startsWith('pyodide/memory-snapshot-') ? url.origin + url.pathname : null;
}

/** Network first; when it fails, the kept copy. A good answer is kept (when it changed) and answered from the cache. */
async function networkThenKept(req, url) {
  const key = shellKey(req, url);
  if (!key) return answer(req, url);
  let res;
  try {
    res = await answer(req, url);
  } catch (e) {
    const kept = await (await caches.open(SHELL_CACHE)).match(key);
    if (kept) return kept;
    throw e;
  }
  if (res.status !== 200 || res.type === 'opaque') return res;
  // Unchanged on the server: answer with the kept copy itself. Chrome keeps compiled code (the
  // WebAssembly of Python and onnxruntime, the page's scripts) only beside an answer from the Cache
  // API, never beside a Response made here, so this is what spares a new tab compiling them again.
  const cache = await caches.open(SHELL_CACHE);
  const now = validator(res);
  const kept = now ? await cache.match(key) : undefined;
  if (kept && validator(kept) === now) {
    res.body?.cancel().catch(() => {});
    return kept;
  }
  // new or changed: it replaces the old copy, and the answer is the kept copy (Chrome keeps compiled
  // WebAssembly and scripts only beside a Cache API answer, so the next tab compiles nothing again)
  try {
    await cache.put(key, res.clone());
    const stored = await cache.match(key);
    if (stored) {
      res.body?.cancel().catch(() => {});
      return stored;
    }
  } catch {
    /* not kept (quota, an aborted body): the network's answer below */
  }
  return res;
}

const validator = (res) => [res.headers.get('ETag'), res.headers.get('Last-Modified')].filter(Boolean).join(' ');


/** Keep the files the page loaded before this worker controlled it (from the HTTP cache, mostly). */
async function keepAll(urls) {
  const cache = await caches.open(SHELL_CACHE);
  for (const u of urls) {
    let url;
    try {
      url = new URL(u, scope());
    } catch {
      continue;
    }
    if (url.origin !== self.location.origin) continue;
    const navigation = url.pathname === scope().pathname || url.pathname === scope().pathname + 'index.html';
    const key = navigation ? scope().href : shellKey(new Request(url), url);
    if (!key || (await cache.match(key))) continue;
    try {
      const res = await answer(new Request(navigation ? scope() : url), url);
      if (res.status === 200) await cache.put(key, res);
    } catch {
      /* gone or offline: kept the next time it passes */
    }
  }
}

async function answer(req, url) {
  const base = scope();
  if (req.method === 'GET' && !req.headers.has('range') && url.pathname.startsWith(base.pathname)) {
    const rel = decodeURIComponent(url.pathname.slice(base.pathname.length));
    if ((await precompressed()).has(rel)) {
      const gz = new URL(url.pathname + '.gz', url);
      let res = null;
      try {
        res = await fetch(gz, { cache: req.cache === 'only-if-cached' ? 'default' : req.cache, credentials: req.credentials, signal: req.signal });
      } catch {
        res = null; // fall back to the plain file below
      }
      if (res?.ok && res.body) {
        const encoded = /gzip/i.test(res.headers.get('Content-Encoding') ?? '');
        const body = encoded ? res.body : res.body.pipeThrough(new DecompressionStream('gzip'));
        const headers = new Headers(res.headers);
        headers.delete('Content-Length'); // the compressed size; the decoded one is not known up front
        headers.delete('Content-Encoding');
        headers.set('Content-Type', TYPES[rel.split('.').pop()] ?? 'application/octet-stream');
        return isolated(new Response(body, { status: 200, statusText: 'OK', headers }));
      }
    }
  }
  return isolated(await fetch(req));
}

function isolated(res) {
  if (res.status === 0) return res; // opaque: its headers cannot be read or set
  const headers = new Headers(res.headers);
  for (const [k, v] of Object.entries(ISOLATION)) headers.set(k, v);
  const ext = new URL(res.url || 'x:/', 'x:/').pathname.split('.').pop();
  if (TYPES[ext] && (ext === 'wasm' || ext === 'mjs')) headers.set('Content-Type', TYPES[ext]);
  return new Response(res.status === 204 || res.status === 304 ? null : res.body, { status: res.status, statusText: res.statusText, headers });
}
