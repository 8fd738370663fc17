// Fetches a bundle (manifest.json + every file it lists), checks each file's sha256 against the
// manifest and keeps it in the Cache API, so a second visit downloads nothing.
//
// Why hashes are checked on every load, cached or not: a cache entry can be damaged (disk,
// extensions, a half-written put) and a model fed garbage produces garbage silently. A damaged
// entry is evicted and downloaded again; a fresh download that still mismatches stops the load.

export const CACHE_NAME = 'diffusion-explainer-bundle-v1';

export interface FileInfo {
  bytes: number;
  sha256: string;
}

export interface Manifest {
  format: string;
  format_version: number;
  name?: string;
  model: { image_size: [number, number]; latent_size: [number, number]; [k: string]: unknown };
  components: Record<string, { files: string[]; precision?: string; [k: string]: unknown }>;
  files: Record<string, FileInfo>;
  scheduler: { default: string; config: Record<string, unknown> };
  about?: { description?: string; examples?: string[]; guidance?: number; vocabulary?: Record<string, string[]> };
  [k: string]: unknown;
}

export interface LoadedBundle {
  url: string;
  manifest: Manifest;
  manifestText: string;
  files: Map<string, Uint8Array>;
  totalBytes: number;
  downloadedBytes: number;
}

export interface LoaderEvents {
  progress(file: string, loaded: number, total: number, fromCache: boolean): void;
  notice(text: string): void;
}

export class BundleLoadError extends Error {}

export async function fetchManifest(url: string): Promise<{ manifest: Manifest; text: string }> {
  const where = new URL('manifest.json', url).href;
  let res: Response;
  try {
    res = await fetch(where, { cache: 'no-cache' });
  } catch (e) {
    throw new BundleLoadError(
      `cannot reach the bundle at ${where} (${(e as Error).message}); start the page with \`diffusion-explainer serve\` or pass ?bundle=URL`,
    );
  }
  if (!res.ok) {
    throw new BundleLoadError(
      `no bundle at ${where} (HTTP ${res.status}); start the page with \`diffusion-explainer serve\` or pass ?bundle=URL`,
    );
  }
  const text = await res.text();
  let manifest: Manifest;
  try {
    manifest = JSON.parse(text);
  } catch {
    throw new BundleLoadError(`${where} is not valid JSON; re-export the bundle`);
  }
  if (manifest?.format !== 'diffusion-explainer-bundle' || typeof manifest.files !== 'object') {
    throw new BundleLoadError(`${where} is not a diffusion-explainer bundle manifest`);
  }
  return { manifest, text };
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', data as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The cache key names the content, so a re-exported bundle is a cache miss, not "corruption". */
function cacheKey(url: string, info: FileInfo): string {
  const u = new URL(url);
  u.searchParams.set('sha256', info.sha256);
  return u.href;
}

async function openCache(events: LoaderEvents): Promise<Cache | null> {
  try {
    return typeof caches === 'undefined' ? null : await caches.open(CACHE_NAME);
  } catch (e) {
    events.notice(`the browser's Cache API is unavailable (${(e as Error).message}); the bundle will be downloaded on every visit`);
    return null;
  }
}

async function download(url: string, rel: string, info: FileInfo, onBytes: (n: number) => void): Promise<Uint8Array> {
  let res: Response;
  try {
    // no-store: our Cache API copy is the cache; an HTTP-cached stale copy would only mislead.
    res = await fetch(url, { cache: 'no-store' });
  } catch (e) {
    throw new BundleLoadError(`could not download ${rel} (${(e as Error).message})`);
  }
  if (!res.ok || !res.body) throw new BundleLoadError(`could not download ${rel}: HTTP ${res.status} from ${url}`);
  const out = new Uint8Array(info.bytes);
  const reader = res.body.getReader();
  let at = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.length > out.length) {
      await reader.cancel();
      throw new BundleLoadError(
        `${rel} from the server is larger than the manifest's ${info.bytes} bytes; the bundle on the server is inconsistent — re-export it. Nothing was run.`,
      );
    }
    out.set(value, at);
    at += value.length;
    onBytes(value.length);
  }
  if (at !== info.bytes) {
    throw new BundleLoadError(
      `${rel} from the server has ${at} bytes, the manifest says ${info.bytes}; the bundle on the server is incomplete — re-export it. Nothing was run.`,
    );
  }
  return out;
}

export async function loadBundleFiles(url: string, manifest: Manifest, manifestText: string, events: LoaderEvents): Promise<LoadedBundle> {
  const cache = await openCache(events);
  const entries = Object.entries(manifest.files);
  const total = entries.reduce((s, [, f]) => s + f.bytes, 0);
  const files = new Map<string, Uint8Array>();
  let loaded = 0;
  let downloaded = 0;
  let lastReport = 0;
  const uncached: string[] = [];
  let cacheError = '';
  const report = (file: string, fromCache: boolean, force = false) => {
    const now = performance.now();
    if (force || now - lastReport > 50) {
      lastReport = now;
      events.progress(file, loaded, total, fromCache);
    }
  };

  for (const [rel, info] of entries) {
    const fileUrl = new URL(rel, url).href;
    const key = cacheKey(fileUrl, info);
    let data: Uint8Array | null = null;
    let corrupted = false;
    const hit = cache ? await cache.match(key) : undefined;
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      if (bytes.length === info.bytes && (await sha256Hex(bytes)) === info.sha256) {
        data = bytes;
        loaded += bytes.length;
        report(rel, true, true);
      } else {
        corrupted = true;
        await cache!.delete(key);
      }
    }
    if (!data) {
      const fresh = await download(fileUrl, rel, info, (n) => {
        loaded += n;
        downloaded += n;
        report(rel, false);
      });
      const digest = await sha256Hex(fresh);
      if (digest !== info.sha256) {
        throw new BundleLoadError(
          `${rel} from the server does not match the bundle manifest (sha256 ${digest.slice(0, 12)}…, expected ${info.sha256.slice(0, 12)}…); the bundle on the server is corrupted — re-export it. Nothing was run.`,
        );
      }
      if (cache) {
        try {
          await cache.put(key, new Response(fresh as Uint8Array<ArrayBuffer>, { headers: { 'Content-Type': 'application/octet-stream' } }));
        } catch (e) {
          uncached.push(rel); // one notice for all of them, below: a big bundle can fail for every chunk
          cacheError = (e as Error).message;
        }
      }
      if (corrupted) events.notice(`${rel} in the cache was corrupted; re-downloaded`);
      data = fresh;
      report(rel, false, true);
    }
    files.set(rel, data);
  }
  if (uncached.length) {
    const what = uncached.length === 1 ? uncached[0] : `${uncached.length} files (${uncached[0]} … ${uncached[uncached.length - 1]})`;
    events.notice(
      `could not keep ${what} in the browser cache (${cacheError}); ${uncached.length === 1 ? 'it' : 'they'} will be downloaded again next time`,
    );
  }
  if (cache) await pruneStale(cache, url, manifest);
  return { url, manifest, manifestText, files, totalBytes: total, downloadedBytes: downloaded };
}

/** Drop cached versions of this bundle's files that the current manifest no longer names. */
async function pruneStale(cache: Cache, url: string, manifest: Manifest): Promise<void> {
  const wanted = new Set(Object.entries(manifest.files).map(([rel, info]) => cacheKey(new URL(rel, url).href, info)));
  const base = new URL(url).href;
  for (const req of await cache.keys()) {
    if (req.url.startsWith(base) && !wanted.has(req.url)) await cache.delete(req);
  }
}
