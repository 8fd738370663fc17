// Chrome keeps a WebAssembly module's optimised code beside the answer it was compiled from: beside the
// HTTP cache's copy for a plain fetch, beside a Cache API entry for an answer from there. A first visit
// is not answered by the offline worker (public/coi-sw.js: its ~40 MB would pass through one more
// thread), so Python's and onnxruntime's WebAssembly compiled from the network, and every later visit,
// answered by that worker from the Cache API, found nothing kept there and compiled both again. On such
// a visit the engine worker puts those two files in the offline worker's cache itself and compiles them
// from there (A/B, 2 threads: reload 3.44–3.81 → 3.22–3.33 s; first visit and new tab unchanged).

/** The offline worker's cache (public/coi-sw.js SHELL_CACHE; a test holds the two equal). */
export const SHELL_CACHE = 'diffusion-explainer-shell-v1';

/** The key the offline worker keeps a file under (coi-sw.js shellKey): its address without a query. */
export const shellKey = (url: URL) => url.origin + url.pathname;

/** Whether `url` is one of the engine's WebAssembly files that this applies to (under `base`'s ort/ or pyodide/). */
export function isEngineWasm(url: URL, base: string): boolean {
  const b = new URL(base);
  if (url.origin !== b.origin || !url.pathname.startsWith(b.pathname)) return false;
  return /^(ort|pyodide)\/[^/]+\.wasm$/.test(decodeURIComponent(url.pathname.slice(b.pathname.length)));
}

type Fetch = typeof fetch;

/** A fetch that answers the engine's WebAssembly from `cacheName`, putting the network's answer there
 * first when it is not there yet; every other request, and any failure, goes to `plain`. A file already
 * kept is fetched plainly (the offline worker decides whether its copy is fresh). */
export function compileFromCache(plain: Fetch, base: string, cacheName: string, storage: CacheStorage): Fetch {
  return async (input, init) => {
    const url = new URL(input instanceof Request ? input.url : String(input), base);
    if (!isEngineWasm(url, base)) return plain(input, init);
    let cache: Cache;
    try {
      cache = await storage.open(cacheName);
      if (await cache.match(shellKey(url))) return plain(input, init);
    } catch {
      return plain(input, init);
    }
    const res = await plain(input, init);
    if (res.status !== 200 || res.type === 'opaque') return res;
    try {
      await cache.put(shellKey(url), res); // consumes the answer: no second copy held in memory
      const kept = await cache.match(shellKey(url));
      if (kept) return kept;
    } catch {
      /* not kept (quota, an aborted body) */
    }
    return plain(input, init); // the HTTP cache has it now
  };
}
