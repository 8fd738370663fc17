// Cross-origin isolation for a static host that sends no special headers (GitHub Pages,
// `python -m http.server`, a plain bucket): this service worker answers the page's same-origin
// requests itself and adds COOP/COEP/CORP to the responses, so the page gets SharedArrayBuffer
// (WASM threads, the shared stop flag). `diffusion-explainer serve` sends those headers itself;
// there the page is already isolated and never registers this worker (src/isolation.ts).
//
// It also makes precompression work on hosts that do not negotiate encodings: for a file listed in
// precompressed.json (written by the build: `X.gz` beside `X`) it fetches `X.gz` and decodes it
// with DecompressionStream, so the wire carries gzip everywhere. A host that itself labels `X.gz`
// with `Content-Encoding: gzip` is decoded by the browser already; then the body is passed on.
//
// The first visit: the page loads without isolation, registers this worker, waits until it is
// active and reloads once (src/isolation.ts); the reload is answered by this worker, with the
// headers. Cross-origin requests are not touched (the page makes none).

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

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

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
  event.respondWith(answer(req, url));
});

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
