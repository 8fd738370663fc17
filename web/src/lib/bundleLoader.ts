// Fetches a bundle (manifest.json + every file it lists), checks each file's sha256 against the
// manifest and keeps it in the Cache API, so a second visit downloads nothing.
//
// Why hashes are checked on every load, cached or not: a cache entry can be damaged (disk,
// extensions, a half-written put) and a model fed garbage produces garbage silently. A damaged
// entry is evicted and downloaded again; a fresh download that still mismatches stops the load.

export const CACHE_NAME = 'diffusion-explainer-bundle-v1';
/** Bundle files loaded at once (a browser opens up to six connections to one server). */
const PARALLEL_FILES = 4;
/** Each cached bundle's record (its manifest, where it came from) is kept under this path of the
 * page's origin plus the bundle's fingerprint: the sha256 of its manifest.json, which names every
 * file's sha256, so equal fingerprints are equal bundles. */
const RECORDS = '/__diffusion-explainer-bundles__/';
/** A folder opened from disk has no address: its files are cached under <page>local-bundle/<fingerprint>/. */
export const LOCAL_FOLDER = 'local-bundle/';
const LOCAL_URL = /\/local-bundle\/([0-9a-f]{64})\/$/;

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

/** A bundle kept in the Cache API, as the Runtime panel lists it. */
export interface CachedBundle {
  fingerprint: string;
  name: string;
  /** The folder URL it was loaded from (a local folder's: <page>local-bundle/<fingerprint>/). */
  url: string;
  kind: 'url' | 'folder';
  /** The manifest's total of its files' bytes. */
  bytes: number;
  /** Every file the manifest lists is in the cache. */
  complete: boolean;
  added: number;
}

/** The folder URL a local folder's bundle is cached under. */
export function localBundleUrl(pageBase: string, fingerprint: string): string {
  return new URL(`${LOCAL_FOLDER}${fingerprint}/`, pageBase).href;
}

export const fingerprintOf = (manifestText: string) => sha256Hex(new TextEncoder().encode(manifestText));

function recordKey(fingerprint: string): string {
  return new URL(RECORDS + fingerprint, self.location.origin).href;
}

async function records(cache: Cache): Promise<{ key: string; res: Response }[]> {
  const out = [];
  for (const req of await cache.keys()) {
    if (!new URL(req.url).pathname.startsWith(RECORDS)) continue;
    const res = await cache.match(req);
    if (res) out.push({ key: req.url, res });
  }
  return out;
}

/** The newest cached record of the bundle at `url` (its manifest text), or null. */
async function cachedManifest(url: string): Promise<string | null> {
  const cache = typeof caches === 'undefined' ? null : await caches.open(CACHE_NAME).catch(() => null);
  if (!cache) return null;
  const local = LOCAL_URL.exec(new URL(url).pathname);
  if (local) return (await (await cache.match(recordKey(local[1])))?.text()) ?? null;
  let best: { added: number; res: Response } | null = null;
  for (const { res } of await records(cache)) {
    if (res.headers.get('X-Bundle-Source') !== url) continue;
    const added = Number(res.headers.get('X-Bundle-Added') ?? 0);
    if (!best || added > best.added) best = { added, res };
  }
  return best ? await best.res.text() : null;
}

export function parseManifest(text: string, where: string): Manifest {
  let manifest: Manifest;
  try {
    manifest = JSON.parse(text);
  } catch {
    throw new BundleLoadError(`${where} is not valid JSON; re-export the bundle`);
  }
  if (manifest?.format !== 'diffusion-explainer-bundle' || typeof manifest.files !== 'object' || manifest.files === null) {
    throw new BundleLoadError(`${where} is not a diffusion-explainer bundle manifest`);
  }
  return manifest;
}

/** The manifest of the bundle at `url`: from the network; a local folder's, or any bundle's when the
 * network is down (offline), from its cached record. */
export async function fetchManifest(url: string): Promise<{ manifest: Manifest; text: string; offline?: boolean }> {
  const where = new URL('manifest.json', url).href;
  if (LOCAL_URL.test(new URL(url).pathname)) {
    const text = await cachedManifest(url);
    if (text === null)
      throw new BundleLoadError(`the folder bundle ${where} is no longer in this browser's storage; open its folder again`);
    return { manifest: parseManifest(text, where), text };
  }
  let res: Response;
  try {
    res = await fetch(where, { cache: 'no-cache' });
  } catch (e) {
    const text = await cachedManifest(url).catch(() => null);
    if (text !== null) return { manifest: parseManifest(text, where), text, offline: true };
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
  return { manifest: parseManifest(text, where), text };
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

export interface LoadOptions {
  /** Read a file from somewhere else than `url` (a local folder's File); the bytes are still checked. */
  read?: (rel: string, info: FileInfo) => Promise<Uint8Array>;
  /** Called with each file once it is checked; throwing stops the load (the tokenizer's early check). */
  onFile?: (rel: string, data: Uint8Array) => void | Promise<void>;
  /** Load the smallest files first (the tokenizer before the model), so early checks run before the big downloads. */
  smallFirst?: boolean;
  /** For the messages: where the bytes come from. */
  origin?: 'server' | 'folder';
  kind?: CachedBundle['kind'];
}

export async function loadBundleFiles(
  url: string,
  manifest: Manifest,
  manifestText: string,
  events: LoaderEvents,
  options: LoadOptions = {},
): Promise<LoadedBundle> {
  const cache = await openCache(events);
  const from = options.origin === 'folder' ? 'in the folder' : 'from the server';
  const remedy =
    options.origin === 'folder' ? 'the folder is damaged — export it again' : 'the bundle on the server is corrupted — re-export it';
  const entries = Object.entries(manifest.files);
  if (options.smallFirst) entries.sort((a, b) => a[1].bytes - b[1].bytes);
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

  const puts: Promise<void>[] = [];
  const loadOne = async (rel: string, info: FileInfo) => {
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
      const onBytes = (n: number) => {
        loaded += n;
        if (!options.read) downloaded += n;
        report(rel, false);
      };
      const fresh = options.read ? await options.read(rel, info) : await download(fileUrl, rel, info, onBytes);
      if (options.read) onBytes(fresh.length);
      const digest = await sha256Hex(fresh);
      if (digest !== info.sha256) {
        throw new BundleLoadError(
          `${rel} ${from} does not match the bundle manifest (sha256 ${digest.slice(0, 12)}…, expected ${info.sha256.slice(0, 12)}…); ${remedy}. Nothing was run.`,
        );
      }
      if (cache) {
        // written while the next files load: the copy is for the next visit, not this one
        const body = new Response(fresh as Uint8Array<ArrayBuffer>, { headers: { 'Content-Type': 'application/octet-stream' } });
        puts.push(
          cache.put(key, body).catch((e) => {
            uncached.push(rel); // one notice for all of them, below: a big bundle can fail for every chunk
            cacheError = (e as Error).message;
          }),
        );
      }
      if (corrupted) events.notice(`${rel} in the cache was corrupted; re-downloaded`);
      data = fresh;
      report(rel, false, true);
    }
    files.set(rel, data);
    await options.onFile?.(rel, data);
  };
  // Several files at once: each one's wait (the network, the cache's disk, hashing) overlaps the
  // others'. One at a time where an early check must run before the big downloads.
  const queue = [...entries];
  const worker = async () => {
    for (let next = queue.shift(); next; next = queue.shift()) await loadOne(...next);
  };
  const lanes = Array.from({ length: options.smallFirst ? 1 : PARALLEL_FILES }, worker);
  try {
    await Promise.all(lanes);
  } finally {
    queue.length = 0; // a failed file stops the lanes that are still going
    await Promise.allSettled(lanes);
  }
  await Promise.all(puts);
  if (uncached.length) {
    const what = uncached.length === 1 ? uncached[0] : `${uncached.length} files (${uncached[0]} … ${uncached[uncached.length - 1]})`;
    events.notice(
      `could not keep ${what} in the browser cache (${cacheError}); ${uncached.length === 1 ? 'it' : 'they'} will be downloaded again next time`,
    );
  }
  if (cache) {
    await pruneStale(cache, url, manifest);
    await remember(cache, url, manifest, manifestText, options.kind ?? 'url').catch((e) =>
      events.notice(`could not record the bundle in the browser cache (${(e as Error).message})`),
    );
  }
  return { url, manifest, manifestText, files, totalBytes: total, downloadedBytes: downloaded };
}

/** Record the bundle under its fingerprint (the list, offline loads); older records of the same address go. */
async function remember(cache: Cache, url: string, manifest: Manifest, manifestText: string, kind: CachedBundle['kind']) {
  const fingerprint = await fingerprintOf(manifestText);
  for (const { key, res } of await records(cache)) {
    if (res.headers.get('X-Bundle-Source') === url && !key.endsWith(fingerprint)) await cache.delete(key);
  }
  const headers = {
    'Content-Type': 'application/json',
    'X-Bundle-Source': url,
    'X-Bundle-Kind': kind,
    'X-Bundle-Name': encodeURIComponent(manifest.name ?? 'bundle'),
    'X-Bundle-Added': String(Date.now()),
  };
  await cache.put(recordKey(fingerprint), new Response(manifestText, { headers }));
}

/** The bundles kept in this browser, newest first. */
export async function listCachedBundles(): Promise<CachedBundle[]> {
  if (typeof caches === 'undefined') return [];
  const cache = await caches.open(CACHE_NAME);
  const keys = new Set((await cache.keys()).map((r) => r.url));
  const out: CachedBundle[] = [];
  for (const { key, res } of await records(cache)) {
    let manifest: Manifest;
    try {
      manifest = JSON.parse(await res.text());
    } catch {
      continue;
    }
    const url = res.headers.get('X-Bundle-Source') ?? '';
    const files = Object.entries(manifest.files ?? {});
    out.push({
      fingerprint: key.slice(key.lastIndexOf('/') + 1),
      name: decodeURIComponent(res.headers.get('X-Bundle-Name') ?? 'bundle'),
      url,
      kind: res.headers.get('X-Bundle-Kind') === 'folder' ? 'folder' : 'url',
      bytes: files.reduce((s, [, f]) => s + f.bytes, 0),
      complete: files.every(([rel, info]) => keys.has(cacheKey(new URL(rel, url).href, info))),
      added: Number(res.headers.get('X-Bundle-Added') ?? 0),
    });
  }
  return out.sort((a, b) => b.added - a.added);
}

/** Remove a cached bundle: its record and every file its manifest lists. */
export async function removeCachedBundle(fingerprint: string): Promise<void> {
  const cache = await caches.open(CACHE_NAME);
  const res = await cache.match(recordKey(fingerprint));
  if (res) {
    const url = res.headers.get('X-Bundle-Source') ?? '';
    const manifest = JSON.parse(await res.text()) as Manifest;
    for (const [rel, info] of Object.entries(manifest.files ?? {})) {
      if (safeRel(rel)) await cache.delete(cacheKey(new URL(rel, url).href, info));
    }
  }
  await cache.delete(recordKey(fingerprint));
}

const safeRel = (rel: string) => !rel.startsWith('/') && !rel.split('/').includes('..');

/** A bundle file as a Response: its cached copy when the bundle is cached (offline, local folders),
 * else from the network. */
export async function bundleFile(bundleUrl: string, rel: string): Promise<Response> {
  const text = await cachedManifest(bundleUrl).catch(() => null);
  const info = text ? (JSON.parse(text) as Manifest).files?.[rel] : undefined;
  if (info) {
    const hit = await (await caches.open(CACHE_NAME)).match(cacheKey(new URL(rel, bundleUrl).href, info));
    if (hit) return hit;
  }
  return fetch(new URL(rel, bundleUrl));
}

/** Drop cached versions of this bundle's files that the current manifest no longer names (a
 * re-exported bundle at the same address), leaving every other recorded bundle's files alone. */
async function pruneStale(cache: Cache, url: string, manifest: Manifest): Promise<void> {
  const wanted = new Set(Object.entries(manifest.files).map(([rel, info]) => cacheKey(new URL(rel, url).href, info)));
  const others = new Set<string>();
  for (const { res } of await records(cache)) {
    const source = res.headers.get('X-Bundle-Source') ?? '';
    if (source === url || !source) continue;
    try {
      for (const [rel, info] of Object.entries((JSON.parse(await res.text()) as Manifest).files ?? {}))
        others.add(cacheKey(new URL(rel, source).href, info));
    } catch {
      /* an unreadable record names nothing */
    }
  }
  const base = new URL(url).href;
  for (const req of await cache.keys()) {
    if (!req.url.startsWith(base) || wanted.has(req.url) || others.has(req.url)) continue;
    if (new URL(req.url).pathname.startsWith(RECORDS)) continue;
    await cache.delete(req);
  }
}
